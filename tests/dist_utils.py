"""Run a test body on several ranks with real gloo process groups.

Process start-up costs seconds (imports), so callers batch many cases into one ``body`` per spawn.
``body(rank, world_size, *args)`` runs on every rank after ``init_process_group("gloo")``; whatever it
returns on rank 0 is handed back to the caller, and an exception on any rank fails the caller with the
rank's traceback.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, body: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # One intra-op thread per rank: the ranks share the machine's cores.
    import torch

    torch.set_num_threads(1)
    result: Any = None
    error: str | None = None
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = body(rank, world_size, *args)
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        error = traceback.format_exc()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            pickle.dump((result if rank == 0 else None, error), handle)
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(body: Callable, world_size: int, *args: Any) -> Any:
    """Spawn ``world_size`` gloo ranks running ``body``; return rank 0's result, re-raise any failure."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(world_size, _free_port(), out_dir, body, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        results = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as handle:
                results.append(pickle.load(handle))
    errors = [f"rank {rank}:\n{err}" for rank, (_, err) in enumerate(results) if err]
    if errors:
        raise AssertionError("distributed test body failed\n" + "\n".join(errors))
    return results[0][0]
