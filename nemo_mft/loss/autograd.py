"""The autograd Function of the MFT loss: both passes run in forward, backward only scales.

No autograd graph is built over vocab-sized intermediates: forward keeps just the [N, V_local]
gradient, computed in fp32 block by block and rounded once to the student's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from nemo_mft.loss import formulas
from nemo_mft.loss.backends import Backend, ShardLayout, row_blocks
from nemo_mft.loss.exchange import gather_statistics
from nemo_mft.loss.options import MFTOptions
from nemo_mft.loss.validation import check_finite_tokens

# Order of the per-call summary returned next to the loss (sums over valid tokens, weighted by w).
SUMMARY_FIELDS = ("weight_sum", "teacher_correct_sum", "mixing_weight_sum", "student_ce_sum")


@dataclass(frozen=True)
class LossCall:
    """Everything about one call that is not a tensor."""

    options: MFTOptions
    layout: ShardLayout
    tp_group: dist.ProcessGroup | None
    backend: Backend
    token_shape: torch.Size  # labels' shape, for error positions


def _writable_in_place(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """Whether the gradient can overwrite the student buffer: unit column stride, rows that do not
    overlap, and no storage shared with the teacher (which pass 2 still reads)."""
    n, width = student.shape
    return (
        (student.stride(1) == 1 or width == 1)
        and (n <= 1 or student.stride(0) >= width)
        and student.untyped_storage().data_ptr() != teacher.untyped_storage().data_ptr()
    )


def _scale_rows_in_place(grad: torch.Tensor, scale: torch.Tensor) -> None:
    """grad [N, V_local] *= scale [N, 1] (fp32), computed in fp32 and rounded once to grad's dtype.

    By blocks of rows: for a mixed-dtype product CPU kernels convert the operands to fp32 first, so one
    call over a 16-bit gradient would allocate two fp32 copies of it (CUDA kernels cast per element).
    """
    for rows in row_blocks(grad.shape[0], grad.shape[1], grad.device):
        grad[rows].mul_(scale[rows])


class MFTLossFunction(torch.autograd.Function):
    """(student [N, V_local], teacher [N, V_local], labels [N], weights [N]) -> (loss, summary [4]).

    ``weights`` are w in the compute dtype with 0 on ignored tokens. The loss is a scalar for
    reductions "mean"/"sum" and [N] w * l for "none". The gradient is stored in the logits' dtype
    for every reduction (as Megatron's vocab-parallel cross-entropy does). Backward costs nothing when
    the incoming gradient is 1 (the scalar 1, or all ones for "none", e.g. from ``loss.sum()``);
    otherwise it is one scaling pass over the stored gradient, in place (no second logits-sized
    buffer; the factor, per token for "none", is applied in fp32, but for 16-bit logits the product is
    rounded a second time). Because of that in-place scaling, a second backward through the same call
    (retain_graph) raises instead of reusing it.

    With ``options.inplace_grad`` the gradient is written into the student buffer in forward (when
    `_writable_in_place` allows; otherwise into a new buffer) and that buffer is returned as the grad.
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, weights, call: LossCall):
        opts, layout = call.options, call.layout
        compute_dtype = weights.dtype
        valid = weights > 0
        local_labels = torch.where(valid, labels - layout.offset, -1)

        stats, local_argmax = call.backend.statistics(
            student, teacher, local_labels, layout, opts.temperature, compute_dtype
        )
        all_stats, all_argmax = gather_statistics(stats, local_argmax + layout.offset, call.tp_group)
        targets = formulas.combine_statistics(
            all_stats, all_argmax, labels, opts.temperature, opts.tau, opts.correct_all, opts.distill_only
        )
        check_finite_tokens(targets.finite(), valid, call.token_shape)

        def weighted(values: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, values * weights, 0.0)

        token_loss = weighted(targets.loss)
        weight_sum = weights.sum()
        summary = torch.stack([
            weight_sum,
            weighted(targets.teacher_correct).sum(),
            weighted(targets.mix).sum(),
            weighted(targets.student_ce).sum(),
        ])
        if opts.reduction == "none":
            loss, normalizer = token_loss, None
        elif opts.reduction == "sum":
            loss, normalizer = token_loss.sum(), None
        else:  # mean; no valid token -> 0, not NaN
            normalizer = torch.where(weight_sum > 0, weight_sum, 1.0)
            loss = token_loss.sum() / normalizer

        ctx.reduction = opts.reduction
        ctx.scaled_in_place = False  # set by a backward that scales the stored gradient
        if ctx.needs_input_grad[0]:
            coef = weights if normalizer is None else weights / normalizer
            out = student.detach() if opts.inplace_grad and _writable_in_place(student, teacher) else None
            grad = call.backend.gradient(
                student, teacher, local_labels, layout, targets, coef, opts.temperature, student.dtype, out=out
            )
            if out is not None:
                # Kernels write through raw pointers: bump the logits' version so that any other
                # autograd node that saved them fails loudly instead of using the gradient as logits.
                torch.autograd.graph.increment_version(out)
            ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(summary)
        return loss, summary

    @staticmethod
    def backward(ctx, grad_loss, grad_summary):
        if ctx.scaled_in_place:
            raise RuntimeError(
                "mft_loss: a second backward through the same loss call is not supported when the incoming "
                "gradient is not 1 (the first one scaled the stored gradient in place); compute the loss again"
            )
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            if not bool((grad_loss == 1).all()):  # one host sync
                _scale_rows_in_place(grad, grad_loss.unsqueeze(-1))
                ctx.scaled_in_place = True
        else:
            scale = float(grad_loss)  # one host sync; a Python float keeps the product in fp32 opmath
            if scale != 1.0:
                grad.mul_(scale)
                ctx.scaled_in_place = True
        return grad, None, None, None, None
