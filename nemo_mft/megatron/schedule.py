"""Micro-batch loops on megatron-core's schedules, and one optimizer step.

Everything runs over the process groups it is given (``groups``, a ``ProcessGroupCollection``): the
schedule gets them as ``pg_collection`` with a ``P2PCommunicator`` over ``groups.pp``.

Pipeline tensor shapes: megatron's 1F1B schedule allocates the p2p buffers as
``get_tensor_shapes(...) = [(seq_length [/TP with sequence parallelism], micro_batch_size, hidden)]``
(megatron-core 0.16.1, ``schedules.get_tensor_shapes``). When the teacher runs, `MFTModel` sends
[S, B, 2H] (student; teacher concatenated on the hidden dim), and `with_teacher_activations`, passed as the
schedule's ``adjust_tensor_shapes_fn``, doubles the last dimension of the receive and send shapes. The
no-pipelining schedule exchanges nothing and takes no such hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
from megatron.core.process_groups_config import ProcessGroupCollection

from nemo_mft.megatron.model import unwrap

__all__ = ["StepResult", "run_microbatches", "train_step", "with_teacher_activations"]


@dataclass(frozen=True)
class StepResult:
    reports: dict[str, tuple[float, float]]
    grad_norm: float
    update_successful: bool


def with_teacher_activations(recv_shapes: list, send_shapes: list) -> tuple[list, list]:
    """``adjust_tensor_shapes_fn`` for a forward step that runs the teacher: [S, B, H] -> [S, B, 2H]."""
    def widen(shapes: list) -> list:
        return [None if shape is None else (*shape[:-1], 2 * shape[-1]) for shape in shapes]

    return widen(recv_shapes), widen(send_shapes)


def _report_keys(forward_step: Callable, store: list, groups: ProcessGroupCollection) -> list[str]:
    keys = getattr(forward_step, "report_keys", None)
    if keys is not None:
        return list(keys)
    # A foreign forward step: the last stage knows the keys; share them along the pipeline.
    box = [sorted(store[0]) if store else None]
    if groups.pp.size() > 1:
        dist.broadcast_object_list(box, group_src=groups.pp.size() - 1, group=groups.pp)
    return box[0] or []


def _reduce_reports(store: list, keys: list[str], groups: ProcessGroupCollection) -> dict[str, tuple[float, float]]:
    """Sum [sum, count] reports over micro-batches (last stage), data-parallel ranks, share along PP."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    totals = torch.zeros(len(keys), 2, dtype=torch.float64, device=device)
    last_stage = groups.pp.size() - 1
    if groups.pp.rank() == last_stage:
        for reports in store:
            for i, key in enumerate(keys):
                totals[i] += reports[key].to(device=device, dtype=torch.float64)
    if groups.dp_cp.size() > 1:
        dist.all_reduce(totals, group=groups.dp_cp)
    if groups.pp.size() > 1:
        dist.broadcast(totals, group_src=last_stage, group=groups.pp)
    values = totals.tolist()
    return {key: (values[i][0], values[i][1]) for i, key in enumerate(keys)}


def run_microbatches(forward_step: Callable, data_iterator: Iterator, chunks: list, *,
                     groups: ProcessGroupCollection, num_microbatches: int, seq_length: int, micro_batch_size: int,
                     forward_only: bool) -> dict[str, tuple[float, float]]:
    """Run ``num_microbatches`` micro-batches through megatron's schedule for this layout.

    Returns ``{key: (sum, count)}`` summed over micro-batches and data-parallel ranks, identical on every
    rank. With ``forward_only=False`` the gradients are accumulated (and finalized by the config's
    ``finalize_model_grads_func``, see `optim.wrap_with_ddp`).
    """
    if len(chunks) != 1:
        raise ValueError(f"expected one model chunk per stage (no virtual pipeline), got {len(chunks)}")
    pipelined = groups.pp.size() > 1
    schedule_options = {}
    if pipelined:
        schedule_options["p2p_communicator"] = P2PCommunicator(pp_group=groups.pp, config=unwrap(chunks[0]).config)
        if getattr(forward_step, "runs_teacher", False):
            schedule_options["adjust_tensor_shapes_fn"] = with_teacher_activations
    forward_backward = get_forward_backward_func(pp_size=groups.pp.size(), vp_size=None)
    store = forward_backward(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
        pg_collection=groups,
        **schedule_options,
    )
    return _reduce_reports(store, _report_keys(forward_step, store, groups), groups)


def train_step(forward_step: Callable, data_iterator: Iterator, chunks: list, optimizer, *,
               groups: ProcessGroupCollection, num_microbatches: int, seq_length: int, micro_batch_size: int,
               regularizer=None) -> StepResult:
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
    reports = run_microbatches(forward_step, data_iterator, chunks, groups=groups, num_microbatches=num_microbatches,
                               seq_length=seq_length, micro_batch_size=micro_batch_size, forward_only=False)
    if regularizer is not None:
        regularizer.add_to_grads()
    update_successful, grad_norm, _ = optimizer.step()
    if optimizer.config.clip_grad <= 0.0:
        grad_norm = optimizer.get_grad_norm()  # step() only measures it when clipping
    return StepResult(reports=reports, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                      update_successful=bool(update_successful))
