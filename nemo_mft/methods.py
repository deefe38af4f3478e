"""The training objectives: their names, what each needs, and the validated options of one (`Objective`).

This module is the one place that knows the method names. The recipe schema, the megatron forward step,
the CLI and the benchmarks ask it; none of them spells a method's meaning out again.

    mft                 the paper's corrected distillation: q = (1 - m) p + m onehot(y), every token corrected
    mft_incorrect_only  the paper's ablation: only tokens whose teacher argmax is wrong are corrected
    kd                  plain distillation, q = p (no correction; tau unused)
    kd_ce               the constant-mix baseline (1 - alpha) KD + alpha CE, alpha = ``kd_ce_alpha``
    ft                  plain cross-entropy finetuning (no teacher)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemo_mft.loss.options import IMPLS

__all__ = ["METHODS", "MethodSpec", "method_spec", "Objective"]


@dataclass(frozen=True)
class MethodSpec:
    """What a method needs and how it maps onto the loss.

    Attributes:
        uses_teacher: the frozen teacher runs beside the student during training.
        uses_tau: the margin tau changes the loss (the MFT correction is applied).
        correct_all: with the correction, rows where the teacher is already right are sharpened too.
        distill_only: the distillation target is the teacher's distribution itself (q = p).
        mixes_ce: a constant share ``kd_ce_alpha`` of plain cross-entropy is added.
    """

    uses_teacher: bool
    uses_tau: bool
    correct_all: bool = True
    distill_only: bool = False
    mixes_ce: bool = False


_SPECS = {
    "mft": MethodSpec(uses_teacher=True, uses_tau=True),
    "ft": MethodSpec(uses_teacher=False, uses_tau=False),
    "kd": MethodSpec(uses_teacher=True, uses_tau=False, distill_only=True),
    "mft_incorrect_only": MethodSpec(uses_teacher=True, uses_tau=True, correct_all=False),
    "kd_ce": MethodSpec(uses_teacher=True, uses_tau=False, distill_only=True, mixes_ce=True),
}
METHODS = tuple(_SPECS)


def method_spec(method: str) -> MethodSpec:
    """The `MethodSpec` of ``method``; ValueError naming the known methods otherwise."""
    try:
        return _SPECS[method]
    except (KeyError, TypeError):
        raise ValueError(f"method must be one of {METHODS}, got {method!r}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Objective:
    """The training objective of a run, validated at construction (ValueError names the field).

    Attributes:
        method: one of `METHODS`.
        tau: MFT margin in probability space, in [0, 1] (0.25 in the paper); used by mft and
            mft_incorrect_only.
        temperature: softmax temperature T > 0 of teacher and student (the loss is scaled by T^2).
        kd_ce_alpha: method kd_ce's cross-entropy weight, in [0, 1].
        impl: the loss implementation, "auto", "torch" or "triton" (`nemo_mft.loss.MFTOptions`).
        inplace_grad: the student logits' buffer receives their gradient during the loss (one
            [B, S, V_local] tensor less per micro-batch); methods with a cross-entropy term never do.
    """

    method: str = "mft"
    tau: float = 0.25
    temperature: float = 1.0
    kd_ce_alpha: float = 0.5
    impl: str = "auto"
    inplace_grad: bool = True

    def __post_init__(self) -> None:
        method_spec(self.method)
        if not (_is_number(self.tau) and 0.0 <= self.tau <= 1.0):
            raise ValueError(f"tau must be in [0, 1] (a margin in probability space), got {self.tau!r}")
        if not (_is_number(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0 and finite, got {self.temperature!r}")
        if not (_is_number(self.kd_ce_alpha) and 0.0 <= self.kd_ce_alpha <= 1.0):
            raise ValueError(f"kd_ce_alpha must be in [0, 1], got {self.kd_ce_alpha!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if not isinstance(self.inplace_grad, bool):
            raise ValueError(f"inplace_grad must be true or false, got {self.inplace_grad!r}")

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    @property
    def uses_teacher(self) -> bool:
        return self.spec.uses_teacher

    @property
    def loss_tau(self) -> float:
        """The tau handed to the loss: ``tau`` where the method corrects, else 0 (then unused)."""
        return float(self.tau) if self.spec.uses_tau else 0.0

    @property
    def label(self) -> str:
        """Short description, e.g. ``mft tau=0.25`` or ``kd_ce alpha=0.5``."""
        spec = self.spec
        if spec.uses_tau:
            return f"{self.method} tau={self.tau:g}"
        if spec.mixes_ce:
            return f"{self.method} alpha={self.kd_ce_alpha:g}"
        return self.method
