"""Options of the MFT loss, validated once at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

REDUCTIONS = ("mean", "sum", "none")
IMPLS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class MFTOptions:
    """Hyper-parameters of the MFT loss.

    Attributes:
        tau: margin in probability space by which the corrected target must favour the label over the
            teacher's argmax, in [0, 1] (0.25 in the paper, 0.2 in ModelOpt's default).
        temperature: softmax temperature T > 0 for teacher and student; the loss is scaled by T^2.
        correct_all: also sharpen rows where the teacher is already right (the authors' default);
            False is the paper's "incorrect-only" ablation.
        distill_only: no correction at all, q = p on every row (plain distillation, the paper's KD
            baseline); tau and correct_all are then ignored. Note that tau = 0 is NOT the same: it
            still raises the label of a wrong row until it ties with the teacher's argmax.
        ignore_index: label value that marks a token without loss.
        reduction: "mean" (sum of w*l over sum of w), "sum" or "none" (per-token w*l).
        impl: "torch" (chunked PyTorch), "triton" (fused kernels), or "auto" (Triton on CUDA when
            available, PyTorch otherwise).
        inplace_grad: write the gradient into the student logits' buffer during the forward call
            instead of a new [N, V_local] buffer (saves one logits-sized allocation). The logits are
            then destroyed: only for callers that do not use them after the loss (e.g. Megatron's
            output layer, whose backward does not need its output). See `mft_loss`.
    """

    tau: float = 0.25
    temperature: float = 1.0
    correct_all: bool = True
    distill_only: bool = False
    ignore_index: int = -100
    reduction: str = "mean"
    impl: str = "auto"
    inplace_grad: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, (int, float)) and 0.0 <= self.tau <= 1.0):
            raise ValueError(f"tau must be a number in [0, 1] (a margin in probability space), got {self.tau!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        for name in ("correct_all", "distill_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.inplace_grad, bool):
            raise ValueError(f"inplace_grad must be a bool, got {self.inplace_grad!r}")
        if not isinstance(self.ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {self.ignore_index!r}")
