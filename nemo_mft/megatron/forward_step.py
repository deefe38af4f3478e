"""megatron-core forward step for every method (mft, ft, kd, mft_incorrect_only, kd_ce) through one code path.

``forward_step(data_iterator, model) -> (output_tensor, loss_func)`` is megatron-core's schedule contract.
The iterator yields micro-batches ``{"tokens", "labels", "loss_mask", "position_ids"}`` of [B, S] tensors
(`nemo_mft.data`); every pipeline stage draws one per micro-batch (stages other than the first and last
ignore it). ``loss_func(output_tensor) -> (loss_sum, num_tokens, reports)`` fits
``TransformerConfig.calculate_per_token_loss=True``: megatron divides the gradients by the global token count.
``reports[key]`` = float32 ``[sum, count]`` for key in `report_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from megatron.core import parallel_state

from nemo_mft.config.schema import METHODS
from nemo_mft.megatron.losses import LossSums, constant_mix_sums, cross_entropy_sums, mft_sums

__all__ = ["REPORT_KEYS", "MethodSpec", "method_spec", "MFTForwardStep", "make_forward_step"]

REPORT_KEYS = ("loss", "student_ce", "teacher_acc", "mixing_weight")


@dataclass(frozen=True)
class MethodSpec:
    """What a method means for the loss: teacher use, margin and which tokens get corrected."""

    uses_teacher: bool
    tau: float
    correct_all: bool
    distill_only: bool = False
    ce_weight: float = 0.0  # > 0: loss = (1 - ce_weight) * distillation + ce_weight * cross-entropy


def method_spec(method: str, tau: float, kd_ce_alpha: float = 0.5) -> MethodSpec:
    """mft: (teacher, tau, all tokens); ft: plain CE; kd: q = p (plain distillation, no correction);
    mft_incorrect_only: correct_all=False; kd_ce: (1 - alpha) KD + alpha CE, alpha = ``kd_ce_alpha``."""
    if method == "kd_ce":
        if not 0.0 <= kd_ce_alpha <= 1.0:
            raise ValueError(f"kd_ce_alpha must be in [0, 1], got {kd_ce_alpha}")
        return MethodSpec(True, 0.0, True, distill_only=True, ce_weight=float(kd_ce_alpha))
    if method == "mft":
        return MethodSpec(True, tau, True)
    if method == "ft":
        return MethodSpec(False, 0.0, True)
    if method == "kd":
        return MethodSpec(True, 0.0, True, distill_only=True)
    if method == "mft_incorrect_only":
        return MethodSpec(True, tau, False)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _report(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([total.detach().float(), count.detach().float()])


class MFTForwardStep:
    """Callable forward step; ``runs_teacher`` tells `schedule.run_microbatches` the activation layout.

    With ``inplace_grad`` (the default) the MFT-type methods (mft, kd, mft_incorrect_only) write the
    gradient of the student logits into the logits' own buffer while ``loss_func`` runs: the last stage
    then holds one [B, S, V_local] tensor fewer per micro-batch. The logits are not needed after the loss
    (the output layer's backward uses its input and weight); a wrapper that reads them after ``loss_func``
    must pass ``inplace_grad=False`` (recipe: ``mft.inplace_grad=false``). kd_ce and ft never write in place.

    Attributes:
        runs_teacher: the teacher runs beside the student (pipeline stages exchange [S, 2B, H]).
        report_keys: the keys of ``reports``, in order.
    """

    def __init__(self, method: str, *, tau: float, temperature: float, impl: str = "auto",
                 evaluate: bool = False, vocab_size: int, kd_ce_alpha: float = 0.5, inplace_grad: bool = True) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.method = method
        self.spec = method_spec(method, tau, kd_ce_alpha)
        self.temperature = float(temperature)
        self.impl = impl
        self.evaluate = evaluate
        self.vocab_size = int(vocab_size)
        self.inplace_grad = bool(inplace_grad)
        self.runs_teacher = self.spec.uses_teacher and not evaluate
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
        tp_group = parallel_state.get_tensor_model_parallel_group()
        if not self.runs_teacher:
            return cross_entropy_sums(student_logits, labels, loss_mask, vocab_size=self.vocab_size, tp_group=tp_group)
        if teacher_logits is None:
            raise ValueError(f"method {self.method!r} needs the teacher's logits")
        if self.spec.ce_weight > 0.0:
            return constant_mix_sums(student_logits, teacher_logits, labels, loss_mask, alpha=self.spec.ce_weight,
                                     temperature=self.temperature, vocab_size=self.vocab_size, tp_group=tp_group,
                                     impl=self.impl)
        return mft_sums(student_logits, teacher_logits, labels, loss_mask, tau=self.spec.tau,
                        temperature=self.temperature, correct_all=self.spec.correct_all,
                        distill_only=self.spec.distill_only, vocab_size=self.vocab_size, tp_group=tp_group,
                        impl=self.impl, inplace_grad=self.inplace_grad)

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


def make_forward_step(method: str, *, tau: float, temperature: float, impl: str = "auto", evaluate: bool = False,
                      vocab_size: int, kd_ce_alpha: float = 0.5, inplace_grad: bool = True) -> MFTForwardStep:
    """Forward step for ``method`` (see `MFTForwardStep`). ``evaluate``: student only, "loss" = student CE.

    vocab_size: the tokenizer's vocabulary (padding columns of the model are excluded from the losses).
    kd_ce_alpha: the cross-entropy weight of method ``kd_ce``.
    inplace_grad: the student logits' buffer receives their gradient in ``loss_func`` (see `MFTForwardStep`).
    """
    return MFTForwardStep(method, tau=tau, temperature=temperature, impl=impl, evaluate=evaluate,
                          vocab_size=vocab_size, kd_ce_alpha=kd_ce_alpha, inplace_grad=inplace_grad)
