"""`MFTLoss`: the loss as a torch.nn.Module holding its options."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_mft.loss.functional import compute_mft_loss
from nemo_mft.loss.options import MFTOptions


class MFTLoss(torch.nn.Module):
    """Module form of `nemo_mft.mft_loss`; the options are validated at construction."""

    def __init__(
        self,
        tau: float = 0.25,
        temperature: float = 1.0,
        correct_all: bool = True,
        distill_only: bool = False,
        ignore_index: int = -100,
        reduction: str = "mean",
        impl: str = "auto",
        inplace_grad: bool = False,
    ) -> None:
        super().__init__()
        self.options = MFTOptions(
            tau=tau, temperature=temperature, correct_all=correct_all, distill_only=distill_only,
            ignore_index=ignore_index, reduction=reduction, impl=impl, inplace_grad=inplace_grad,
        )

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor,
        loss_mask: torch.Tensor | None = None,
        vocab_size: int | None = None,
        tp_group: dist.ProcessGroup | None = None,
        return_stats: bool = False,
    ):
        """See `nemo_mft.mft_loss` for shapes and semantics."""
        return compute_mft_loss(
            student_logits, teacher_logits, labels, self.options, loss_mask=loss_mask,
            vocab_size=vocab_size, tp_group=tp_group, return_stats=return_stats,
        )

    def extra_repr(self) -> str:
        o = self.options
        return f"tau={o.tau}, temperature={o.temperature}, correct_all={o.correct_all}, distill_only={o.distill_only}, reduction={o.reduction!r}"
