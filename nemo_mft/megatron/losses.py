"""Per-micro-batch loss sums on vocab-parallel logits: MFT (via `nemo_mft.mft_loss`) and cross-entropy.

Logits are [B, S, V_local]: this TP rank's contiguous shard of the padded vocabulary (rank r holds global
columns [r V_local, (r+1) V_local)). Columns at or beyond the true ``vocab_size`` are padding and take no
part in either loss. Every TP rank returns the same (global) sums. Sums are over tokens weighted by
``loss_mask`` [B, S] (the answer tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from nemo_mft.loss import mft_loss
from nemo_mft.loss.exchange import group_rank_and_size
from nemo_mft.megatron.cross_entropy import vocab_parallel_cross_entropy

__all__ = ["LossSums", "mft_sums", "cross_entropy_sums", "constant_mix_sums", "mask_padded_columns"]


@dataclass(frozen=True)
class LossSums:
    """Sums over one micro-batch's weighted tokens (0-dim float32 tensors; ``loss`` keeps its graph).

    ``teacher_correct`` and ``mixing_weight`` are None when no teacher was used.
    """

    loss: torch.Tensor
    weight: torch.Tensor
    student_ce: torch.Tensor
    teacher_correct: torch.Tensor | None = None
    mixing_weight: torch.Tensor | None = None


def mask_padded_columns(logits: torch.Tensor, vocab_size: int, tp_rank: int) -> torch.Tensor:
    """``logits`` [..., V_local] with the columns at global index >= vocab_size set to -inf (a new tensor
    when this shard has padding, else ``logits`` itself)."""
    local = logits.shape[-1]
    real = max(0, min(local, vocab_size - tp_rank * local))
    if real == local:
        return logits
    if real == 0:
        raise ValueError(f"TP rank {tp_rank} holds only padding columns (vocab_size {vocab_size}, V_local {local})")
    column = torch.arange(local, device=logits.device)
    return logits.masked_fill(column >= real, float("-inf"))


def cross_entropy_sums(student_logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, *,
                       vocab_size: int, tp_group: dist.ProcessGroup | None) -> LossSums:
    """Cross-entropy of the student on ``labels`` (megatron-core's vocab-parallel cross-entropy, explicit group).

    student_logits [B, S, V_local] (fp32 or 16-bit; computed in fp32), labels [B, S] global ids,
    loss_mask [B, S] weights. Padding columns are masked to -inf first, so the softmax is over the true
    vocabulary (the same quantity as `MFTStats.student_ce`).
    """
    tp_rank, _ = group_rank_and_size(tp_group)
    logits = mask_padded_columns(student_logits.float(), vocab_size, tp_rank)
    if logits is student_logits:
        # vocab_parallel_cross_entropy overwrites fp32 inputs in place: give it its own buffer.
        logits = logits.clone()
    per_token = vocab_parallel_cross_entropy(logits, labels.long(), tp_group)  # [B, S]
    weights = loss_mask.to(per_token.dtype)
    loss = (per_token * weights).sum()
    return LossSums(loss=loss, weight=weights.sum().detach(), student_ce=loss.detach())


def mft_sums(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             loss_mask: torch.Tensor, *, tau: float, temperature: float, correct_all: bool, vocab_size: int,
             tp_group: dist.ProcessGroup | None, impl: str = "auto", distill_only: bool = False,
             inplace_grad: bool = False) -> LossSums:
    """MFT loss sum T^2 sum_w KL(q || softmax(s/T)) and its statistics, on vocab-parallel logits.

    student_logits, teacher_logits [B, S, V_local]; labels [B, S]; loss_mask [B, S] weights.
    inplace_grad: the student logits' buffer receives their gradient during this call (`nemo_mft.mft_loss`).
    """
    loss, stats = mft_loss(
        student_logits, teacher_logits, labels.long(), tau=tau, temperature=temperature, correct_all=correct_all,
        distill_only=distill_only, loss_mask=loss_mask, vocab_size=vocab_size, reduction="sum", tp_group=tp_group,
        impl=impl, return_stats=True, inplace_grad=inplace_grad,
    )
    return LossSums(loss=loss.float(), weight=stats.weight_sum.float(), student_ce=stats.student_ce_sum.float(),
                    teacher_correct=stats.teacher_correct_sum.float(), mixing_weight=stats.mixing_weight_sum.float())


def constant_mix_sums(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      loss_mask: torch.Tensor, *, alpha: float, temperature: float, vocab_size: int,
                      tp_group: dist.ProcessGroup | None, impl: str = "auto") -> LossSums:
    """The constant-mix baseline: (1 - alpha) T^2 sum_w KL(p || softmax(s/T)) + alpha sum_w CE(s, y).

    The classic distillation + cross-entropy mix (Hinton et al.): unlike MFT, the share of the label is the
    same for every token. Shapes as in `mft_sums`; ``mixing_weight`` reports alpha per token.
    """
    kd = mft_sums(student_logits, teacher_logits, labels, loss_mask, tau=0.0, temperature=temperature,
                  correct_all=True, vocab_size=vocab_size, tp_group=tp_group, impl=impl, distill_only=True)
    ce = cross_entropy_sums(student_logits, labels, loss_mask, vocab_size=vocab_size, tp_group=tp_group)
    return LossSums(loss=(1.0 - alpha) * kd.loss + alpha * ce.loss, weight=kd.weight, student_ce=kd.student_ce,
                    teacher_correct=kd.teacher_correct, mixing_weight=alpha * kd.weight)
