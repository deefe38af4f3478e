"""Micro-batch loops on megatron-core's schedules, and one optimizer step.

Pipeline tensor shapes: megatron's 1F1B schedule allocates the p2p buffers as
``get_tensor_shapes(...) = (seq_length [/TP with sequence parallelism], micro_batch_size, hidden)``
(megatron-core 0.16.1, ``schedules.get_tensor_shapes``). When the teacher runs, `MFTModel` sends
[S, 2B, H] (student; teacher concatenated on the micro-batch dim), so the schedule gets
``micro_batch_size * 2``. The micro-batch size is used for nothing else there (the no-pipelining schedule
ignores it), so data and losses are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_mft.megatron.model import unwrap

__all__ = ["StepResult", "run_microbatches", "train_step", "activation_copies"]


@dataclass(frozen=True)
class StepResult:
    reports: dict[str, tuple[float, float]]
    grad_norm: float
    update_successful: bool


def activation_copies(forward_step: Callable) -> int:
    """Micro-batch multiplier of the inter-stage activations: 2 when the forward step runs the teacher."""
    return 2 if getattr(forward_step, "runs_teacher", False) else 1


def _report_keys(forward_step: Callable, store: list) -> list[str]:
    keys = getattr(forward_step, "report_keys", None)
    if keys is not None:
        return list(keys)
    # A foreign forward step: the last stage knows the keys; share them along the pipeline.
    box = [sorted(store[0]) if store else None]
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast_object_list(box, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                   group=parallel_state.get_pipeline_model_parallel_group())
    return box[0] or []


def _reduce_reports(store: list, keys: list[str]) -> dict[str, tuple[float, float]]:
    """Sum [sum, count] reports over micro-batches (last stage), data-parallel ranks, share along PP."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    totals = torch.zeros(len(keys), 2, dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for reports in store:
            for i, key in enumerate(keys):
                totals[i] += reports[key].to(device=device, dtype=torch.float64)
    dp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    if dist.get_world_size(dp_group) > 1:
        dist.all_reduce(totals, group=dp_group)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(totals, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
    values = totals.tolist()
    return {key: (values[i][0], values[i][1]) for i, key in enumerate(keys)}


def run_microbatches(forward_step: Callable, data_iterator: Iterator, chunks: list, *, num_microbatches: int,
                     seq_length: int, micro_batch_size: int, forward_only: bool) -> dict[str, tuple[float, float]]:
    """Run ``num_microbatches`` micro-batches through megatron's schedule for this layout.

    Returns ``{key: (sum, count)}`` summed over micro-batches and data-parallel ranks, identical on every
    rank. With ``forward_only=False`` the gradients are accumulated (and finalized by the config's
    ``finalize_model_grads_func``, see `optim.wrap_with_ddp`).
    """
    if len(chunks) != 1:
        raise ValueError(f"expected one model chunk per stage (no virtual pipeline), got {len(chunks)}")
    forward_backward = get_forward_backward_func()
    store = forward_backward(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size * activation_copies(forward_step),
        forward_only=forward_only,
    )
    return _reduce_reports(store, _report_keys(forward_step, store))


def train_step(forward_step: Callable, data_iterator: Iterator, chunks: list, optimizer, *, num_microbatches: int,
               seq_length: int, micro_batch_size: int, regularizer=None) -> StepResult:
    """One optimizer step: zero grads, forward/backward all micro-batches, finalize grads, step.

    ``chunks`` are DDP-wrapped (`optim.wrap_with_ddp`). ``regularizer`` (e.g.
    `regularization.L2ToInitial`) adds its gradient term to the finalized gradients before the step.
    The caller steps the LR scheduler.
    """
    config = unwrap(chunks[0]).config
    if config.finalize_model_grads_func is None:
        raise ValueError("chunks are not prepared for training: wrap them with optim.wrap_with_ddp()")
    for chunk in chunks:
        chunk.train()
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = run_microbatches(forward_step, data_iterator, chunks, num_microbatches=num_microbatches,
                               seq_length=seq_length, micro_batch_size=micro_batch_size, forward_only=False)
    if regularizer is not None:
        regularizer.add_to_grads()
    update_successful, grad_norm, _ = optimizer.step()
    if optimizer.config.clip_grad <= 0.0:
        grad_norm = optimizer.get_grad_norm()  # step() only measures it when clipping
    return StepResult(reports=reports, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                      update_successful=bool(update_successful))
