"""Public functional entry points: `mft_loss` and `corrected_target`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from nemo_mft.loss import formulas
from nemo_mft.loss.autograd import LossCall, MFTLossFunction, SUMMARY_FIELDS
from nemo_mft.loss.backends import ShardLayout, select_backend
from nemo_mft.loss.exchange import group_rank_and_size
from nemo_mft.loss.options import MFTOptions
from nemo_mft.loss.validation import check_labels_and_weights, check_shapes, resolve_vocab_size


@dataclass(frozen=True)
class MFTStats:
    """Sums over the valid tokens of one call, weighted by w (0-dim tensors, detached).

    Sums (not means) so that callers can aggregate over micro-batches and ranks; the properties give
    the means (0 when no token is valid).
    """

    weight_sum: torch.Tensor
    teacher_correct_sum: torch.Tensor
    mixing_weight_sum: torch.Tensor
    student_ce_sum: torch.Tensor

    def _mean(self, total: torch.Tensor) -> torch.Tensor:
        return total / torch.where(self.weight_sum > 0, self.weight_sum, 1.0)

    @property
    def teacher_accuracy(self) -> torch.Tensor:
        """Fraction of tokens where the teacher's argmax is the label."""
        return self._mean(self.teacher_correct_sum)

    @property
    def mixing_weight(self) -> torch.Tensor:
        """Mean mixing weight m (0: target = teacher, 1: target = one-hot label)."""
        return self._mean(self.mixing_weight_sum)

    @property
    def student_ce(self) -> torch.Tensor:
        """Mean cross-entropy of the student on the labels at temperature 1 (nats)."""
        return self._mean(self.student_ce_sum)


def _compute_dtype(student: torch.Tensor) -> torch.dtype:
    return torch.float64 if student.dtype == torch.float64 else torch.float32


def compute_mft_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    options: MFTOptions,
    loss_mask: torch.Tensor | None = None,
    vocab_size: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
    return_stats: bool = False,
):
    """`mft_loss` with the options already validated (shared by the functional and module forms)."""
    check_shapes(student_logits, teacher_logits, labels, loss_mask)
    rank, tp_size = group_rank_and_size(tp_group)
    local_width = student_logits.shape[-1]
    vocab = resolve_vocab_size(vocab_size, local_width, tp_size)
    offset = rank * local_width
    layout = ShardLayout(offset=offset, real_width=max(0, min(local_width, vocab - offset)))

    compute_dtype = _compute_dtype(student_logits)
    labels = labels.long()
    weights = torch.ones(labels.shape, dtype=compute_dtype, device=labels.device) if loss_mask is None \
        else loss_mask.to(compute_dtype)
    check_labels_and_weights(labels, weights, options.ignore_index, vocab)
    weights = torch.where(labels == options.ignore_index, 0.0, weights)

    call = LossCall(
        options=options,
        layout=layout,
        tp_group=tp_group if tp_size > 1 else None,
        backend=select_backend(options.impl, student_logits.device),
        token_shape=labels.shape,
    )
    loss, summary = MFTLossFunction.apply(
        student_logits.reshape(-1, local_width),
        teacher_logits.detach().reshape(-1, local_width),
        labels.reshape(-1),
        weights.reshape(-1),
        call,
    )
    if options.reduction == "none":
        loss = loss.view(labels.shape)
    if not return_stats:
        return loss
    return loss, MFTStats(**dict(zip(SUMMARY_FIELDS, summary.unbind(0))))


def mft_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau: float = 0.25,
    temperature: float = 1.0,
    correct_all: bool = True,
    distill_only: bool = False,
    ignore_index: int = -100,
    loss_mask: torch.Tensor | None = None,
    vocab_size: int | None = None,
    reduction: str = "mean",
    tp_group: dist.ProcessGroup | None = None,
    impl: str = "auto",
    return_stats: bool = False,
    inplace_grad: bool = False,
):
    """Minifinetuning loss: T^2 KL(q || softmax(s/T)) with the teacher target corrected toward the label.

    Args:
        student_logits: [..., V_local] fp32/bf16/fp16 (fp64 stays fp64); gets the gradient.
        teacher_logits: [..., V_local] frozen teacher logits (no gradient flows to them).
        labels: [...] int64 GLOBAL token ids, or ``ignore_index``.
        tau: margin in [0, 1] by which q favours the label over the teacher's argmax.
        temperature: T > 0; the loss is scaled by T^2.
        correct_all: sharpen rows where the teacher is right too (False: paper's "incorrect-only").
        distill_only: q = p, no correction (plain distillation baseline; tau, correct_all ignored).
        loss_mask: [...] bool or float token weights w (0 excludes), e.g. answer-only masks.
        vocab_size: true vocabulary size; logit columns at or beyond it are padding and excluded.
        reduction: "mean" = sum(w l) / sum(w), "sum" = sum(w l), "none" = [...] w l.
        tp_group: tensor-parallel group; with size > 1 the logits are this rank's contiguous vocab
            shard (rank r holds columns [r V_local, (r+1) V_local)); every rank returns the global loss.
        impl: "auto", "torch" or "triton".
        return_stats: also return an `MFTStats` (teacher accuracy, mean m, student CE over valid tokens).
        inplace_grad: when the student logits need a gradient, write it into their buffer during this
            call instead of allocating a new [..., V_local] one; backward then hands that buffer on
            (with no extra pass when the incoming gradient is 1: the scalar 1, or all ones for
            "none"). The logits' values are destroyed: use only when nothing reads them after the
            loss. Their autograd version is bumped, so an op that saved them for its backward raises
            instead of computing garbage.
            Falls back to a new buffer (same result) when their last dimension is strided or when
            they share storage with the teacher logits.

    Returns:
        loss (fp32, fp64 for fp64 inputs), or (loss, MFTStats). No valid token gives 0 and a zero gradient.

    Raises:
        ValueError: bad options, mismatched shapes, labels out of range, negative/non-finite weights,
            non-finite logits in a valid row, a vocab_size beyond the logits.
    """
    options = MFTOptions(
        tau=tau, temperature=temperature, correct_all=correct_all, distill_only=distill_only,
        ignore_index=ignore_index, reduction=reduction, impl=impl, inplace_grad=inplace_grad,
    )
    return compute_mft_loss(
        student_logits, teacher_logits, labels, options, loss_mask=loss_mask, vocab_size=vocab_size,
        tp_group=tp_group, return_stats=return_stats,
    )


@torch.no_grad()
def corrected_target(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau: float,
    temperature: float = 1.0,
    correct_all: bool = True,
) -> torch.Tensor:
    """The corrected teacher distribution q = (1 - m) softmax(t/T) + m onehot(y), single device.

    For inspection and debugging (it materializes q). teacher_logits [..., V], labels [...] with
    every label in [0, V). Returns q [..., V] in fp32 (fp64 for fp64 logits).
    """
    options = MFTOptions(tau=tau, temperature=temperature, correct_all=correct_all)
    check_shapes(teacher_logits, teacher_logits, labels, None)
    vocab = teacher_logits.shape[-1]
    labels = labels.long()
    check_labels_and_weights(labels, torch.ones(labels.shape), ignore_index=None, vocab_size=vocab)
    compute_dtype = _compute_dtype(teacher_logits)
    t2d = teacher_logits.reshape(-1, vocab).to(compute_dtype)
    y = labels.reshape(-1)
    stats, argmax = formulas.shard_statistics(t2d, t2d, y, options.temperature, compute_dtype)
    targets = formulas.combine_statistics(
        stats.unsqueeze(0), argmax.unsqueeze(0), y, options.temperature, options.tau, options.correct_all
    )
    mix = targets.mix.unsqueeze(-1)
    q = (1.0 - mix) * torch.softmax(t2d / options.temperature, dim=-1)
    q.scatter_add_(-1, y.unsqueeze(-1), mix)
    return q.view(teacher_logits.shape)
