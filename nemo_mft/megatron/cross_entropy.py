"""Vocab-parallel cross-entropy over an explicit tensor-parallel group.

megatron-core's ``vocab_parallel_cross_entropy`` reads its group from ``parallel_state``; this is the same
computation (its static helpers ``VocabParallelCrossEntropy.*``: max, predicted logit, sum-exp, softmax
gradient) with the group passed in, so the forward step never reaches into global state. Results are
identical to megatron's function on the same group. Like it, the fp32 input buffer is overwritten with
the softmax: pass a tensor the caller does not need again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy

from nemo_mft.loss.exchange import group_rank_and_size

__all__ = ["vocab_parallel_cross_entropy"]


def _all_reduce(tensor: torch.Tensor, op, tp_group: dist.ProcessGroup | None) -> None:
    if group_rank_and_size(tp_group)[1] > 1:
        dist.all_reduce(tensor, op=op, group=tp_group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, tp_group):
        logits, logits_max = VocabParallelCrossEntropy.calculate_logits_max(logits)
        _all_reduce(logits_max, dist.ReduceOp.MAX, tp_group)
        rank, _ = group_rank_and_size(tp_group)
        width = logits.size(-1)
        target_mask, masked_target_1d, predicted, sum_exp, exp_logits = (
            VocabParallelCrossEntropy.calculate_predicted_logits(logits, target, logits_max, rank * width,
                                                                 (rank + 1) * width))
        _all_reduce(predicted, dist.ReduceOp.SUM, tp_group)
        _all_reduce(sum_exp, dist.ReduceOp.SUM, tp_group)
        softmax, loss = VocabParallelCrossEntropy.calculate_cross_entropy_loss(exp_logits, predicted, sum_exp)
        ctx.save_for_backward(softmax, target_mask, masked_target_1d)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, target_mask, masked_target_1d = ctx.saved_tensors
        grad_2d, arange_1d, softmax_update, grad_input = (
            VocabParallelCrossEntropy.prepare_gradient_calculation_operands(softmax, target_mask))
        grad_input = VocabParallelCrossEntropy.calculate_gradients(grad_2d, arange_1d, masked_target_1d,
                                                                   softmax_update, grad_input, grad_output)
        return grad_input, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 tp_group: dist.ProcessGroup | None) -> torch.Tensor:
    """Per-token cross-entropy [...] in nats of vocab-sharded ``logits`` [..., V_local] on global ``target``.

    Rank r of ``tp_group`` holds global columns [r V_local, (r+1) V_local); None = one shard.
    """
    return _VocabParallelCrossEntropy.apply(logits, target, tp_group)
