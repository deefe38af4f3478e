"""The one collective of the loss: gather every shard's per-token statistics over the TP group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_rank_and_size(tp_group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, size) of this process in ``tp_group``; (0, 1) without a group or distributed backend."""
    if tp_group is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group=tp_group), dist.get_world_size(group=tp_group)


def gather_statistics(
    stats: torch.Tensor, argmax: torch.Tensor, tp_group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather per-token statistics over the tensor-parallel group, in one collective.

    Args:
        stats: [N, K] float statistics of this rank's shard.
        argmax: [N] int64 global teacher-argmax index of this rank's shard.

    Returns:
        ([R, N, K] stats, [R, N] argmax) in rank order; R = 1 without a group (no communication).
    """
    _, size = group_rank_and_size(tp_group)
    if size == 1:
        return stats.unsqueeze(0), argmax.unsqueeze(0)
    # The int64 argmax travels bit-exactly inside the float message: its 8 bytes are reinterpreted as
    # 8 / itemsize extra float columns (a float cast would lose indices above 2^24 in fp32).
    index_columns = argmax.unsqueeze(-1).view(stats.dtype)
    message = torch.cat([stats, index_columns], dim=-1).contiguous()
    gathered = torch.empty((size,) + tuple(message.shape), dtype=message.dtype, device=message.device)
    dist.all_gather(list(gathered.unbind(0)), message, group=tp_group)
    num_stats = stats.shape[-1]
    gathered_argmax = gathered[..., num_stats:].contiguous().view(torch.int64).squeeze(-1)
    return gathered[..., :num_stats], gathered_argmax
