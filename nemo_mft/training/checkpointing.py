"""Checkpoints in megatron-core's distributed format (torch_dist), Megatron's directory layout.

Layout of ``checkpoint.save``::

    save/iter_0000020/                      one dist_checkpointing checkpoint per saved iteration
    save/latest_checkpointed_iteration.txt  "20": written atomically after iter_0000020 is complete
    save/nemo_mft_run.json                  the run marker (see nemo_mft.training.run_dir)

A checkpoint holds ``model`` (the student's sharded state dict, the keys of a plain GPTModel, so any
layout can load it and it can initialize another run), ``optimizer`` (``optimizer.sharded_state_dict``),
``rng_state`` (one ShardedObject per rank: python, numpy, torch and megatron's model-parallel RNG
tracker) and common values: ``iteration``, ``consumed_samples``, ``scheduler`` (OptimizerParamScheduler
state), ``base`` perplexities, ``train_time_s``, ``layout`` and ``method``.

A path given to :func:`resolve_checkpoint` (``checkpoint.load`` / ``checkpoint.pretrained_checkpoint``)
may be a save directory (its tracker names the iteration) or one iteration directory.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from typing import Any, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
FORMAT_VERSION = 1
_ITER_DIR = re.compile(r"^iter_(\d{7,})$")


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def _is_complete(path: str) -> bool:
    # dist_checkpointing writes metadata.json last (after every rank finished its shards).
    return os.path.isfile(os.path.join(path, "metadata.json"))


def saved_iterations(root: str) -> list[int]:
    """Iterations with an ``iter_*`` directory under ``root`` (complete or not), ascending."""
    if not os.path.isdir(root):
        return []
    found = [_ITER_DIR.match(name) for name in os.listdir(root)]
    return sorted(int(m.group(1)) for m in found if m and os.path.isdir(os.path.join(root, m.group(0))))


def holds_checkpoints(root: str) -> bool:
    return os.path.isfile(os.path.join(root, TRACKER_FILE)) or bool(saved_iterations(root))


def read_tracker(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        text = handle.read().strip()
    if not text.isdigit():
        raise ValueError(f"{path}: expected an iteration number, got {text!r}")
    return int(text)


def resolve_checkpoint(path: str) -> Optional[str]:
    """The checkpoint directory ``path`` designates, or None when it holds none.

    ``path`` is either one checkpoint (a directory with ``metadata.json``) or a save directory whose
    tracker names the latest complete iteration. A tracker pointing at a missing or incomplete
    directory is an error.
    """
    if not os.path.isdir(path):
        return None
    if _is_complete(path):
        return path
    iteration = read_tracker(path)
    if iteration is None:
        return None
    target = iteration_dir(path, iteration)
    if not _is_complete(target):
        raise ValueError(f"{os.path.join(path, TRACKER_FILE)} names iteration {iteration}, but {target} is "
                         "missing or incomplete")
    return target


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- RNG

def _rng_state() -> dict[str, Any]:
    from megatron.core import tensor_parallel

    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_object(layout, data: Any):
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject("rng_state", data, (layout.pp_size, layout.tp_size, layout.dp_size),
                         (layout.pp_rank, layout.tp_rank, layout.dp_rank), replica_id=0)


def _layout_key(layout) -> list[int]:
    return [layout.tp_size, layout.pp_size, layout.dp_size]


# ------------------------------------------------------------------------------------ save / load

def _model_state(chunks) -> dict:
    from nemo_mft.megatron import unwrap

    if len(chunks) != 1:
        raise ValueError("one model chunk per pipeline stage is supported (no virtual pipeline)")
    return unwrap(chunks[0]).sharded_state_dict()


def _barrier() -> None:
    torch.distributed.barrier()


def save_checkpoint(root: str, iteration: int, chunks, optimizer, scheduler, layout, *,
                    common: dict[str, Any], keep_last: int) -> str:
    """Save iteration ``iteration`` under ``root`` (collective: every rank calls it); returns its path.

    The tracker file is replaced only after every rank's shards and the metadata are written, so an
    interrupted save never becomes "latest". Then the oldest checkpoints beyond ``keep_last`` (among
    iterations <= this one) are deleted.
    """
    from megatron.core import dist_checkpointing

    path = iteration_dir(root, iteration)
    if layout.rank == 0:
        if os.path.exists(path):  # left by an interrupted save, or by the abandoned future of a resume
            logger.warning("replacing stale checkpoint directory %s", path)
            shutil.rmtree(path)
        os.makedirs(path)
    _barrier()
    model_sd = _model_state(chunks)
    state = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd),
        "rng_state": _rng_object(layout, _rng_state()),
        "scheduler": scheduler.state_dict(),
        "iteration": iteration,
        "checkpoint_version": FORMAT_VERSION,
        "layout": _layout_key(layout),
        **common,
    }
    dist_checkpointing.save(state, path)
    _barrier()
    if layout.rank == 0:
        _write_atomic(os.path.join(root, TRACKER_FILE), f"{iteration}\n")
        older = [it for it in saved_iterations(root) if it <= iteration]
        for stale in older[:-keep_last]:
            shutil.rmtree(iteration_dir(root, stale), ignore_errors=True)
    _barrier()
    return path


def load_pretrained_weights(path: str, chunks) -> str:
    """Load only the model weights of checkpoint ``path`` into the student (any saved layout)."""
    from megatron.core import dist_checkpointing

    from nemo_mft.megatron import unwrap

    ckpt = resolve_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    loaded = dist_checkpointing.load({"model": _model_state(chunks)}, ckpt)
    unwrap(chunks[0]).load_state_dict(loaded["model"])
    return ckpt


def load_checkpoint(path: str, chunks, optimizer, scheduler, layout) -> dict[str, Any]:
    """Full resume from checkpoint directory ``path``: model, optimizer, scheduler and RNG.

    Returns the checkpoint's common values (``iteration``, ``consumed_samples``, ``base``, ...). The RNG
    states are restored only when the parallel layout is the one that saved them (else a warning).
    """
    from megatron.core import dist_checkpointing

    from nemo_mft.megatron import unwrap

    common = dist_checkpointing.load_common_state_dict(path)
    same_layout = list(common.get("layout", [])) == _layout_key(layout)
    model_sd = _model_state(chunks)
    request = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True)}
    if same_layout:
        request["rng_state"] = _rng_object(layout, _rng_state())
    loaded = dist_checkpointing.load(request, path)
    unwrap(chunks[0]).load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    elif layout.rank == 0:
        logger.warning("checkpoint %s was saved with (tp, pp, dp) = %s, this run uses %s: RNG states are "
                       "not restored", path, common.get("layout"), _layout_key(layout))
    return {key: value for key, value in loaded.items() if key not in ("model", "optimizer", "rng_state")}
