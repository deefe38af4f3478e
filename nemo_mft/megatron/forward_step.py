"""megatron-core forward step for every method (`nemo_mft.methods`) through one code path.

``forward_step(data_iterator, model) -> (output_tensor, loss_func)`` is megatron-core's schedule contract.
The iterator yields micro-batches ``{"tokens", "labels", "loss_mask", "position_ids"}`` of [B, S] tensors
(`nemo_mft.data`); every pipeline stage draws one per micro-batch (stages other than the first and last
ignore it). ``loss_func(output_tensor) -> (loss_sum, num_tokens, reports)`` fits
``TransformerConfig.calculate_per_token_loss=True``: megatron divides the gradients by the global token count.
``reports[key]`` = float32 ``[sum, count]`` for key in `report_keys`.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from nemo_mft.megatron.losses import LossSums, constant_mix_sums, cross_entropy_sums, mft_sums
from nemo_mft.methods import Objective

__all__ = ["REPORT_KEYS", "MFTForwardStep", "make_forward_step"]

REPORT_KEYS = ("loss", "student_ce", "teacher_acc", "mixing_weight")


def _report(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([total.detach().float(), count.detach().float()])


class MFTForwardStep:
    """Callable forward step; ``runs_teacher`` tells `schedule.run_microbatches` the activation layout.

    With ``objective.inplace_grad`` (the default) the distillation methods without a cross-entropy term
    (mft, kd, mft_incorrect_only) write the gradient of the student logits into the logits' own buffer
    while ``loss_func`` runs: the last stage then holds one [B, S, V_local] tensor fewer per micro-batch.
    The logits are not needed after the loss (the output layer's backward uses its input and weight); a
    wrapper that reads them after ``loss_func`` must set ``inplace_grad=False``. kd_ce and ft never write
    in place.

    Attributes:
        objective: the method and its options.
        runs_teacher: the teacher runs beside the student (pipeline stages exchange [S, B, 2H]).
        report_keys: the keys of ``reports``, in order.
    """

    def __init__(self, objective: Objective, *, vocab_size: int, tp_group: dist.ProcessGroup | None,
                 evaluate: bool = False) -> None:
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a nemo_mft.methods.Objective, got {type(objective).__name__}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.objective = objective
        self.vocab_size = int(vocab_size)
        self.tp_group = tp_group
        self.evaluate = evaluate
        self.runs_teacher = objective.uses_teacher and not evaluate
        self.report_keys = REPORT_KEYS if self.runs_teacher else REPORT_KEYS[:2]

    def __call__(self, data_iterator: Iterator[dict], model: torch.nn.Module):
        batch = next(data_iterator)
        if torch.cuda.is_available():
            batch = {key: value.cuda(non_blocking=True) for key, value in batch.items()}
        output = model(batch["tokens"], batch["position_ids"], None, run_teacher=self.runs_teacher)
        labels, loss_mask = batch["labels"], batch["loss_mask"]

        def loss_func(output_tensor):
            return self.loss_func(labels, loss_mask, output_tensor)

        return output, loss_func

    def compute(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                loss_mask: torch.Tensor) -> LossSums:
        """The method's loss sums for one micro-batch of [B, S, V_local] logits."""
        objective, spec = self.objective, self.objective.spec
        if not self.runs_teacher:
            return cross_entropy_sums(student_logits, labels, loss_mask, vocab_size=self.vocab_size,
                                      tp_group=self.tp_group)
        if teacher_logits is None:
            raise ValueError(f"method {objective.method!r} needs the teacher's logits")
        if spec.mixes_ce:
            return constant_mix_sums(student_logits, teacher_logits, labels, loss_mask, alpha=objective.kd_ce_alpha,
                                     temperature=objective.temperature, vocab_size=self.vocab_size,
                                     tp_group=self.tp_group, impl=objective.impl)
        return mft_sums(student_logits, teacher_logits, labels, loss_mask, tau=objective.loss_tau,
                        temperature=objective.temperature, correct_all=spec.correct_all,
                        distill_only=spec.distill_only, vocab_size=self.vocab_size, tp_group=self.tp_group,
                        impl=objective.impl, inplace_grad=objective.inplace_grad)

    def loss_func(self, labels: torch.Tensor, loss_mask: torch.Tensor, output_tensor):
        """(loss_sum, num_tokens int32, {key: float32 [sum, count]}) for the last pipeline stage."""
        student_logits, teacher_logits = output_tensor
        sums = self.compute(student_logits, teacher_logits, labels, loss_mask)
        count = sums.weight
        num_tokens = loss_mask.detach().sum().round().to(torch.int)
        reports = {"loss": _report(sums.loss, count), "student_ce": _report(sums.student_ce, count)}
        if self.runs_teacher:
            reports["teacher_acc"] = _report(sums.teacher_correct, count)
            reports["mixing_weight"] = _report(sums.mixing_weight, count)
        return sums.loss, num_tokens, reports


def make_forward_step(objective: Objective, *, vocab_size: int, tp_group: dist.ProcessGroup | None,
                      evaluate: bool = False) -> MFTForwardStep:
    """Forward step for ``objective`` (see `MFTForwardStep`). ``evaluate``: student only, "loss" = student CE.

    vocab_size: the tokenizer's vocabulary (padding columns of the model are excluded from the losses).
    tp_group: the tensor-parallel group the logits are sharded over (``groups.tp``; None for one rank).
    """
    return MFTForwardStep(objective, vocab_size=vocab_size, tp_group=tp_group, evaluate=evaluate)
