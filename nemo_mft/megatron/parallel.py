"""Process groups: torch.distributed start-up and megatron-core's tensor/pipeline/data-parallel layout.

The only global state is torch.distributed's default group and megatron's ``parallel_state``, which
`initialize_parallel` creates and reads, once: it returns the groups as a megatron-core
``ProcessGroupCollection`` (inside `ParallelLayout`), and every other module of the package takes them
from there, as arguments.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from nemo_mft.megatron.cpu_compat import cpu_fallback_active

if TYPE_CHECKING:
    from megatron.core.process_groups_config import ProcessGroupCollection

__all__ = ["ParallelLayout", "init_distributed", "initialize_parallel", "destroy_parallel", "layout_of"]


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits: world = tp x pp x dp (megatron order tp-cp-ep-dp-pp), and its groups.

    ``groups`` holds this rank's process groups (``tp``, ``pp``, ``dp``, ``dp_cp``, ``embd``, ...), the
    object megatron-core's model, DDP, optimizer and schedules take as ``pg_collection``.
    """

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
    groups: "ProcessGroupCollection" = field(compare=False, repr=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> None:
    """Initialize torch.distributed once: from torchrun's env vars, else as a single process.

    Backend nccl with CUDA (device from LOCAL_RANK), gloo otherwise. A no-op when already initialized.
    """
    use_cuda = torch.cuda.is_available()
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


def layout_of(groups: "ProcessGroupCollection") -> ParallelLayout:
    """The layout of this rank in ``groups`` (needs the ``tp``, ``pp`` and ``dp`` groups)."""
    pp_rank, pp_size = groups.pp.rank(), groups.pp.size()
    return ParallelLayout(
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        tp_size=groups.tp.size(),
        pp_size=pp_size,
        dp_size=groups.dp.size(),
        tp_rank=groups.tp.rank(),
        pp_rank=pp_rank,
        dp_rank=groups.dp.rank(),
        is_first_stage=pp_rank == 0,
        is_last_stage=pp_rank == pp_size - 1,
        groups=groups,
    )


def initialize_parallel(tp_size: int, pp_size: int, *, seed: int) -> ParallelLayout:
    """Create megatron's process groups for TP x PP (DP = the rest), seed the RNGs; the layout and groups.

    Requires torch.distributed to be initialized and, on a machine without CUDA, to run inside
    `cpu_compat.megatron_on_cpu`. Raises ValueError when the world size is not a multiple of
    tp_size * pp_size.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.process_groups_config import ProcessGroupCollection

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
    if not torch.cuda.is_available() and not cpu_fallback_active():
        raise RuntimeError("no CUDA device: megatron-core runs on the CPU only inside "
                           "nemo_mft.megatron.megatron_on_cpu() (the CLI and the tests enter it)")
    ps.initialize_model_parallel(tensor_model_parallel_size=tp_size, pipeline_model_parallel_size=pp_size)
    _seed_everything(seed)
    return layout_of(ProcessGroupCollection.use_mpu_process_groups())


def destroy_parallel() -> None:
    """Tear down megatron's process groups (torch.distributed's default group stays)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
