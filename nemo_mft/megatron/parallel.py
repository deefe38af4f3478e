"""Process groups: torch.distributed start-up and megatron-core's tensor/pipeline/data-parallel layout.

The only global state is torch.distributed's default group and megatron's ``parallel_state``.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nemo_mft.megatron.cpu_compat import enable_cpu_fallback

__all__ = ["ParallelLayout", "init_distributed", "initialize_parallel", "destroy_parallel", "current_layout"]


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits: world = tp x pp x dp (megatron order tp-cp-ep-dp-pp)."""

    world_size: int
    rank: int
    tp_size: int
    pp_size: int
    dp_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    is_first_stage: bool
    is_last_stage: bool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> None:
    """Initialize torch.distributed once: from torchrun's env vars, else as a single process.

    Backend nccl with CUDA (device from LOCAL_RANK), gloo otherwise (and megatron's CUDA calls are
    redirected to the CPU, see `cpu_compat`). A no-op when already initialized (except the CPU fallback,
    which is always enabled without CUDA).
    """
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        enable_cpu_fallback()
    if dist.is_initialized():
        return
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:
        rank, world_size = 0, 1
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)


def _seed_everything(seed: int) -> None:
    """megatron's model-parallel seeding: same default RNGs everywhere, per-TP-rank tracker streams."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency of megatron-core
        pass
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def current_layout() -> ParallelLayout:
    """The layout of the initialized megatron parallel state."""
    from megatron.core import parallel_state as ps

    return ParallelLayout(
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_size=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        is_first_stage=ps.is_pipeline_first_stage(ignore_virtual=True),
        is_last_stage=ps.is_pipeline_last_stage(ignore_virtual=True),
    )


def initialize_parallel(tp_size: int, pp_size: int, *, seed: int) -> ParallelLayout:
    """Create megatron's process groups for TP x PP (DP = the rest) and seed the RNGs.

    Requires torch.distributed to be initialized. Raises ValueError when the world size is not a
    multiple of tp_size * pp_size.
    """
    from megatron.core import parallel_state as ps

    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call init_distributed() first")
    if tp_size < 1 or pp_size < 1:
        raise ValueError(f"tensor/pipeline parallel sizes must be >= 1, got tp={tp_size}, pp={pp_size}")
    world_size = dist.get_world_size()
    if world_size % (tp_size * pp_size) != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_model_parallel_size {tp_size} x "
            f"pipeline_model_parallel_size {pp_size} = {tp_size * pp_size}"
        )
    if not torch.cuda.is_available():
        enable_cpu_fallback()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp_size, pipeline_model_parallel_size=pp_size)
    _seed_everything(seed)
    return current_layout()


def destroy_parallel() -> None:
    """Tear down megatron's process groups (torch.distributed's default group stays)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
