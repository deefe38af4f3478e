"""Checkpoints in megatron-core's distributed format (torch_dist), Megatron's directory layout.

Layout of ``checkpoint.save``::

    save/iter_0000020/                      one dist_checkpointing checkpoint per saved iteration
    save/iter_0000020/nemo_mft_manifest.json  sha256 and size of every other file of the checkpoint
    save/iter_0000020/hf/                   the base model's Hugging Face config.json and tokenizer files, when
                                            the run started from one (`BASE_MODEL_DIR`; what export writes back)
    save/latest_checkpointed_iteration.txt  "20": written atomically after iter_0000020 is complete
    save/nemo_mft_run.json                  the run marker (see nemo_mft.training.run_dir)

A checkpoint holds ``model`` (the student's sharded state dict, the keys of a plain GPTModel, so any
layout can load it and it can initialize another run), ``optimizer`` (``optimizer.sharded_state_dict``),
``rng_state`` (one ShardedObject per rank: python, numpy, torch and megatron's model-parallel RNG
tracker) and common values: ``iteration``, ``consumed_samples``, ``scheduler`` (OptimizerParamScheduler
state), ``base`` perplexities, ``train_time_s``, ``layout`` and ``method``.

Saves are atomic: every rank writes into ``iter_0000020.tmp/``; once all shards, ``metadata.json`` and
the manifest are written, rank 0 renames it to ``iter_0000020/`` and only then replaces the tracker. A
kill during a save leaves at most a ``*.tmp`` directory, which no load takes and the next save removes.

Loads are strict: the checksums of the manifest are verified (``verify_checksums``; a checkpoint without
a manifest, written before manifests existed, only warns), and the global shape of every tensor the model
(and optimizer) expects is compared with the stored one before anything is read, so a checkpoint of
another architecture, tokenizer or optimizer is refused with the first differing keys. One difference
is accepted, with a warning: another padding of the same vocabulary (megatron pads it to a multiple of
the TP size, so a weights-only load into another layout meets it) when the tokenizer's ``vocab_size`` is
given and both paddings hold all its tokens. Every user-facing problem is a :class:`CheckpointError` (a
ValueError) with one message, raised on every rank.

Either layer spec loads a checkpoint of the other (megatron-core's local spec stores its norms under
TransformerEngine's fused names). TE's ``_extra_state`` entries (FP8 scaling metadata, unused without
FP8) are saved but never loaded: a checkpoint of the local spec has none, and a loaded model starts them
afresh (`_without_extra_state`).

A path given to :func:`resolve_checkpoint` (``checkpoint.load`` / ``checkpoint.pretrained_checkpoint``)
may be a save directory (its tracker names the iteration) or one iteration directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np
import torch

from nemo_mft.training.guards import RunFailed

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
MANIFEST_FILE = "nemo_mft_manifest.json"
FORMAT_VERSION = 1
MANIFEST_VERSION = 1
STAGING_SUFFIX = ".tmp"
# Subdirectory of a checkpoint with the Hugging Face config.json, tokenizer and generation files of the model
# it was trained from: a checkpoint of an HF model is self-describing (export, reuse as pretrained_checkpoint).
BASE_MODEL_DIR = "hf"
_ITER_DIR = re.compile(r"^iter_(\d{7,})$")
# What an interrupted save leaves: the staging directory, the replaced directory set aside, the tracker's
# temporary file.
_LEFTOVER = re.compile(r"^(iter_\d{7,}(\.old)?\.tmp|" + re.escape(TRACKER_FILE) + r"\.tmp(\.\d+)?)$")
# megatron-core's optimizer state dicts key every tensor "optimizer.<...>"; the model's keys never start so.
_OPTIMIZER_PREFIX = "optimizer."
_LISTED_PROBLEMS = 5  # how many differences an error message names
_HASH_BLOCK = 1 << 20
_REASON_CHARS = 200  # of a low-level error quoted in a message


class CheckpointError(RunFailed):
    """A checkpoint cannot be used as asked: damaged, unfinished, or made for another model / optimizer.
    A `RunFailed` (a ValueError): the CLI prints it and exits with code 2."""


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
        raise CheckpointError(f"{path}: expected an iteration number, got {text!r}")
    return int(text)


def resolve_checkpoint(path: str) -> Optional[str]:
    """The checkpoint directory ``path`` designates, or None when it holds none.

    ``path`` is either one checkpoint (a directory with ``metadata.json``) or a save directory whose
    tracker names the latest complete iteration. A tracker pointing at a missing or incomplete
    directory, and the staging directory of an unfinished save, are errors.
    """
    if not os.path.isdir(path):
        return None
    if _LEFTOVER.match(os.path.basename(os.path.normpath(path))):
        raise CheckpointError(f"{path} is the directory of an unfinished save (interrupted before it was "
                              "renamed into place); load its save directory or a complete iter_* directory")
    if _is_complete(path):
        return path
    iteration = read_tracker(path)
    if iteration is None:
        return None
    target = iteration_dir(path, iteration)
    if not _is_complete(target):
        raise CheckpointError(f"{os.path.join(path, TRACKER_FILE)} names iteration {iteration}, but {target} "
                              "is missing or incomplete")
    return target


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}{STAGING_SUFFIX}"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    """Make the renames inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# ------------------------------------------------------------------------------ rank agreement

def _on_rank0(work: Callable[[], None]) -> None:
    """Run ``work`` on global rank 0 only; every rank returns when it is done, or raises its failure.

    Collective. A :class:`CheckpointError` of rank 0 is raised on every rank with the same message, so all
    ranks stop alike. Any other exception is re-raised on rank 0 (with its traceback) and reported as a
    RuntimeError on the others.
    """
    outcome: Optional[tuple[bool, str]] = None  # (user-facing?, message)
    failure: Optional[BaseException] = None
    if torch.distributed.get_rank() == 0:
        try:
            work()
        except CheckpointError as err:
            outcome = (True, str(err))
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
            outcome, failure = (False, f"rank 0 failed: {type(err).__name__}: {err}"), err
    box = [outcome]
    torch.distributed.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0] is not None:
        user_facing, message = box[0]
        raise CheckpointError(message) if user_facing else RuntimeError(message)


def _raise_if_any_rank_failed(message: Optional[str]) -> None:
    """Collective: raise :class:`CheckpointError` on every rank when one rank passes a message (the first)."""
    everyone: list[Optional[str]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, message)
    failed = [m for m in everyone if m is not None]
    if failed:
        raise CheckpointError(failed[0])


def _low_level_reason(err: BaseException) -> str:
    """``Type: first line`` of the error that made a read fail, through torch.distributed.checkpoint's wrapper."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        err = inner[0] if isinstance(inner, tuple) else inner
    lines = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return reason if len(reason) <= _REASON_CHARS else reason[:_REASON_CHARS - 3] + "..."


def _read(path: str, read: Callable[..., Any], *args: Any) -> Any:
    """``read(*args)`` on the checkpoint ``path``; a damaged or unreadable file becomes a one-line error."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return read(*args)
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
        reason = _low_level_reason(err)
        raise CheckpointError(f"cannot read checkpoint {path}, damaged or incomplete: {reason}") from err


def read_common_state(path: str) -> dict[str, Any]:
    """The common (non-sharded) values of checkpoint ``path`` (iteration, recipe, ...), read by this rank
    alone (no collective, no checksum: the full verification happens when the checkpoint is loaded)."""
    from megatron.core import dist_checkpointing

    return _read(path, dist_checkpointing.load_common_state_dict, path)


def _read_on_every_rank(path: str, read: Callable[..., Any], *args: Any) -> Any:
    """Collective :func:`_read`: when it fails on any rank, every rank raises that rank's message."""
    result, message = None, None
    try:
        result = _read(path, read, *args)
    except CheckpointError as err:
        message = str(err)
    _raise_if_any_rank_failed(message)
    return result


# ------------------------------------------------------------------------------ checksum manifest

def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_files(path: str) -> list[str]:
    """Paths, relative to checkpoint ``path``, of all its files except the manifest (sorted)."""
    found = []
    for folder, _, names in os.walk(path):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), path)
            if relative != MANIFEST_FILE:
                found.append(relative)
    return sorted(found)


def write_manifest(path: str) -> str:
    """Write ``MANIFEST_FILE`` into checkpoint ``path``: size and sha256 of every other file; returns its path.

    Called once every rank finished writing, so the manifest describes the checkpoint as it is complete.
    """
    files = {}
    for relative in _checkpoint_files(path):
        full = os.path.join(path, relative)
        files[relative] = {"size": os.path.getsize(full), "sha256": _sha256(full)}
    manifest = os.path.join(path, MANIFEST_FILE)
    _write_atomic(manifest, json.dumps({"version": MANIFEST_VERSION, "algorithm": "sha256", "files": files},
                                       indent=1, sort_keys=True) + "\n")
    return manifest


def _read_manifest(path: str) -> Optional[dict[str, dict]]:
    """The ``files`` table of checkpoint ``path``'s manifest, None when it has none."""
    manifest = os.path.join(path, MANIFEST_FILE)
    if not os.path.isfile(manifest):
        return None
    try:
        with open(manifest) as handle:
            files = json.load(handle)["files"]
        if not all(isinstance(entry, dict) and "sha256" in entry and "size" in entry for entry in files.values()):
            raise ValueError("an entry lacks sha256 or size")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{manifest} is damaged ({type(err).__name__}: {err}); the checkpoint cannot be "
                              "verified (set checkpoint.verify_checksums=false to load it unverified)") from err
    return files


def _file_problem(path: str, relative: str, expected: dict) -> Optional[str]:
    """Why file ``relative`` of checkpoint ``path`` differs from its manifest entry, or None."""
    full = os.path.join(path, relative)
    if not os.path.isfile(full):
        return f"{full} is missing"
    size = os.path.getsize(full)
    if size != expected["size"] or _sha256(full) != expected["sha256"]:
        return f"{full}: sha256 checksum differs from {MANIFEST_FILE} ({size} bytes, {expected['size']} saved)"
    return None


def verify_manifest(path: str) -> None:
    """Check every file of checkpoint ``path`` against its manifest; :class:`CheckpointError` if one differs.

    A checkpoint without a manifest (saved before manifests existed) is accepted with a warning, and so
    are files the manifest does not list (they are not part of the checkpoint as saved).
    """
    files = _read_manifest(path)
    if files is None:
        logger.warning("checkpoint %s has no %s (saved before checksums were written): its files are not "
                       "verified", path, MANIFEST_FILE)
        return
    problems = [p for p in (_file_problem(path, rel, entry) for rel, entry in sorted(files.items())) if p]
    if problems:
        raise CheckpointError(f"checkpoint {path} is damaged: {_listing(problems)} (set "
                              "checkpoint.verify_checksums=false to skip this check)")
    unlisted = sorted(set(_checkpoint_files(path)) - set(files))
    if unlisted:
        logger.warning("checkpoint %s: files not in its manifest, ignored by the check: %s", path, unlisted)


def _listing(problems: list[str]) -> str:
    """The first ``_LISTED_PROBLEMS`` problems on one line, with how many more there are."""
    shown = "; ".join(problems[:_LISTED_PROBLEMS])
    more = len(problems) - _LISTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def _verify(path: str, verify_checksums: bool) -> None:
    """Collective: rank 0 verifies the manifest of ``path`` (unless switched off); every rank gets the verdict."""
    if not verify_checksums:
        if torch.distributed.get_rank() == 0:
            logger.info("checkpoint.verify_checksums=false: the files of %s are not verified", path)
        return
    _on_rank0(lambda: verify_manifest(path))


# ------------------------------------------------------------------------------ structure check

class ExpectedTensor(NamedTuple):
    """What a load expects of one stored tensor."""

    shape: tuple[int, ...]  # global shape
    vocab_padded: bool  # rows padded to the vocabulary's multiple (megatron's ``allow_shape_mismatch``)


def _expected_tensors(sharded_state_dict: dict) -> dict[str, ExpectedTensor]:
    """Each ShardedTensor that loading ``sharded_state_dict`` reads, by checkpoint key.

    Factories (e.g. the split of a gated MLP weight) are applied on a copy, as dist_checkpointing.load
    does, so the keys and shapes are the ones stored.
    """
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.state_dict_utils import load_preprocess

    preprocessed, _, _ = load_preprocess(sharded_state_dict)
    return {value.key: ExpectedTensor(tuple(value.global_shape), bool(value.allow_shape_mismatch))
            for value in nested_values(preprocessed) if isinstance(value, ShardedTensor)}


def _all_ranks_expected(local: dict[str, ExpectedTensor]) -> dict[str, ExpectedTensor]:
    """Collective: the union of every rank's expected tensors (a pipeline stage holds only its layers)."""
    everyone: list[Optional[dict]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, local)
    merged: dict[str, ExpectedTensor] = {}
    for expected in everyone:
        merged.update(expected)
    return merged


def _stored_shapes(path: str, *, weights_only: bool) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor stored in checkpoint ``path`` (only the model's when ``weights_only``)."""
    from megatron.core import dist_checkpointing

    stored = _read(path, dist_checkpointing.load_tensors_metadata, path)
    return {key: tuple(meta.global_shape) for key, meta in stored.items()
            if not (weights_only and key.startswith(_OPTIMIZER_PREFIX))}


def _only_padding_differs(want: ExpectedTensor, found: tuple[int, ...], vocab_size: Optional[int]) -> bool:
    """Whether a vocabulary tensor differs only in padding rows: same other dimensions, and both the stored
    and the expected rows cover the ``vocab_size`` tokens (unknown ``vocab_size``: never)."""
    return (want.vocab_padded and vocab_size is not None and want.shape[0] != found[0]
            and want.shape[1:] == found[1:] and min(want.shape[0], found[0]) >= vocab_size)


def _compare(expected: dict[str, ExpectedTensor], stored: dict[str, tuple[int, ...]],
             vocab_size: Optional[int]) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """``(problems, padding)``: one line per key missing, unexpected or of another shape (the model's keys
    first), and ``{key: (stored rows, expected rows)}`` of the vocabulary tensors whose padding alone
    differs (loadable: no token row is lost)."""
    problems, padding = [], {}
    for key in sorted(expected.keys() | stored.keys(), key=lambda k: (k.startswith(_OPTIMIZER_PREFIX), k)):
        want, found = expected.get(key), stored.get(key)
        if found is None:
            problems.append(f"{key}: expected {list(want.shape)}, missing from the checkpoint")
        elif want is None:
            problems.append(f"{key}: unexpected tensor {list(found)} in the checkpoint, not in this model")
        elif _only_padding_differs(want, found, vocab_size):
            padding[key] = (found[0], want.shape[0])
        elif want.shape != found:
            problems.append(f"{key}: expected {list(want.shape)}, found {list(found)}")
    return problems, padding


def check_structure(path: str, sharded_state_dict: dict, *, weights_only: bool,
                    vocab_size: Optional[int] = None) -> None:
    """Collective: refuse checkpoint ``path`` unless it holds exactly the tensors the request expects.

    Every rank contributes the tensors its part of ``sharded_state_dict`` expects; rank 0 compares their
    union with the stored global shapes (ignoring the optimizer's when ``weights_only``) and every rank
    raises the same :class:`CheckpointError` when a tensor is missing, unexpected or of another shape.
    Nothing is loaded before this check passes. The one difference accepted (with a warning) is the
    vocabulary padding of the embedding and output layer, which megatron ties to the TP size, when both
    paddings hold the ``vocab_size`` tokens of the tokenizer: the token rows load, padding rows are zero.
    """
    expected = _all_ranks_expected(_expected_tensors(sharded_state_dict))

    def compare() -> None:
        problems, padding = _compare(expected, _stored_shapes(path, weights_only=weights_only), vocab_size)
        if problems:
            raise CheckpointError(f"checkpoint {path} does not fit this model ({len(problems)} tensors differ: "
                                  f"{_listing(problems)}); was it saved with another architecture, tokenizer, "
                                  "vocabulary padding (make_vocab_size_divisible_by) or optimizer?")
        if padding:
            rows = ", ".join(f"{stored} rows stored, {wanted} here" for stored, wanted in sorted(set(padding.values())))
            logger.warning("checkpoint %s pads the vocabulary otherwise (%s; %d tensors, e.g. %s): the %d token "
                           "rows load, padding rows beyond the stored ones are zero", path, rows, len(padding),
                           min(padding), vocab_size)

    _on_rank0(compare)


# ------------------------------------------------------------------------------------ save

def _model_state(chunks) -> dict:
    from nemo_mft.megatron import unwrap

    if len(chunks) != 1:
        raise ValueError("one model chunk per pipeline stage is supported (no virtual pipeline)")
    return unwrap(chunks[0]).sharded_state_dict()


def _barrier() -> None:
    torch.distributed.barrier()


def _remove_leftovers(root: str) -> list[str]:
    """Delete what interrupted saves left under ``root`` (``*.tmp`` directories and files); returns the names."""
    if not os.path.isdir(root):
        return []
    removed = sorted(name for name in os.listdir(root) if _LEFTOVER.match(name))
    for name in removed:
        full = os.path.join(root, name)
        logger.warning("removing %s, left by an interrupted save", full)
        if os.path.isdir(full):
            shutil.rmtree(full)
        else:
            os.remove(full)
    return removed


def _prepare_staging(root: str, staging: str) -> None:
    """Rank 0, before a save: clear leftovers of interrupted saves and create the empty staging directory."""
    os.makedirs(root, exist_ok=True)
    _remove_leftovers(root)
    os.makedirs(staging)


def _publish(staging: str, final: str) -> None:
    """Rename the complete ``staging`` directory to ``final``, replacing a directory already there.

    A directory of the same iteration is left by an interrupted run or by the abandoned future of a resume
    from an earlier iteration; it is set aside (removed as a leftover if a kill comes now) and deleted.
    """
    aside = None
    if os.path.exists(final):
        logger.warning("replacing checkpoint directory %s", final)
        aside = f"{final}.old{STAGING_SUFFIX}"
        os.replace(final, aside)
    os.replace(staging, final)
    _fsync_dir(os.path.dirname(final))
    if aside is not None:
        shutil.rmtree(aside)


def _prune(root: str, iteration: int, keep_last: int) -> None:
    """Delete the oldest checkpoints beyond ``keep_last`` among the iterations <= ``iteration``."""
    older = [it for it in saved_iterations(root) if it <= iteration]
    for stale in older[:-keep_last]:
        shutil.rmtree(iteration_dir(root, stale), ignore_errors=True)


def _attach(staging: str, attachments: Mapping[str, str]) -> None:
    """Copy ``attachments`` ({path relative to the checkpoint: source file}) into the staging directory."""
    for relative, source in attachments.items():
        target = os.path.join(staging, relative)
        if os.path.isabs(relative) or os.path.normpath(relative).startswith(".."):
            raise ValueError(f"attachment {relative!r} must be a path inside the checkpoint")
        os.makedirs(os.path.dirname(target) or staging, exist_ok=True)
        shutil.copy2(source, target)


def _finish_save(root: str, staging: str, iteration: int, keep_last: int,
                 attachments: Optional[Mapping[str, str]] = None) -> None:
    """Rank 0, once every rank's files are written: attachments, manifest, rename into place, tracker,
    pruning (in order)."""
    _attach(staging, attachments or {})
    write_manifest(staging)
    _publish(staging, iteration_dir(root, iteration))
    _write_atomic(os.path.join(root, TRACKER_FILE), f"{iteration}\n")
    _prune(root, iteration, keep_last)


def save_checkpoint(root: str, iteration: int, chunks, optimizer, scheduler, layout, *,
                    common: dict[str, Any], keep_last: int, attachments: Optional[Mapping[str, str]] = None) -> str:
    """Save iteration ``iteration`` under ``root`` (collective: every rank calls it); returns its path.

    The ranks write into ``iter_*.tmp``; once all shards and the metadata are written, rank 0 copies the
    ``attachments`` ({path inside the checkpoint: source file}, e.g. the base model's files under
    `BASE_MODEL_DIR`), writes the checksum manifest, renames the directory into place and then replaces the
    tracker file, so an interrupted save never becomes "latest" nor leaves an ``iter_*`` directory. Then
    the oldest checkpoints beyond ``keep_last`` (among iterations <= this one) are deleted.
    """
    from megatron.core import dist_checkpointing

    final = iteration_dir(root, iteration)
    staging = f"{final}{STAGING_SUFFIX}"
    _on_rank0(lambda: _prepare_staging(root, staging))
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
    dist_checkpointing.save(state, staging)
    _barrier()  # every rank's shards are on disk before rank 0 hashes them
    _on_rank0(lambda: _finish_save(root, staging, iteration, keep_last, attachments))
    return final


def save_weights(root: str, chunks, layout, *, common: dict[str, Any],
                 attachments: Optional[Mapping[str, str]] = None) -> str:
    """A weights-only checkpoint (the student's model state, no optimizer or RNG) as iteration 0 of the new
    save directory ``root`` (collective); returns its path. Loadable by :func:`load_pretrained_weights`
    under any layout; what ``nemo-mft import`` writes."""
    from megatron.core import dist_checkpointing

    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise CheckpointError(f"{root} exists and is not empty; choose a new directory")
    final = iteration_dir(root, 0)
    staging = f"{final}{STAGING_SUFFIX}"
    _on_rank0(lambda: _prepare_staging(root, staging))
    state = {"model": _model_state(chunks), "iteration": 0, "checkpoint_version": FORMAT_VERSION,
             "layout": _layout_key(layout), **common}
    dist_checkpointing.save(state, staging)
    _barrier()
    _on_rank0(lambda: _finish_save(root, staging, 0, 1, attachments))
    return final


def base_model_dir(checkpoint: str) -> Optional[str]:
    """The `BASE_MODEL_DIR` of checkpoint directory ``checkpoint`` when it has a config.json, else None."""
    path = os.path.join(checkpoint, BASE_MODEL_DIR)
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


# ------------------------------------------------------------------------------------ load

def load_pretrained_weights(path: str, chunks, *, vocab_size: Optional[int] = None,
                            verify_checksums: bool = True) -> str:
    """Load only the model weights of checkpoint ``path`` into the student (any saved layout); returns its directory.

    Collective. The checkpoint's files are verified against its manifest (unless ``verify_checksums`` is
    False) and its model tensors must match the student's keys and global shapes (:class:`CheckpointError`
    otherwise, before anything is loaded); with the tokenizer's ``vocab_size``, a vocabulary padding that
    differs (another TP size) is accepted as long as both hold every token (see :func:`check_structure`).
    """
    return _load_weights(path, chunks, adapters=False, vocab_size=vocab_size, verify_checksums=verify_checksums)


def load_adapter_weights(path: str, chunks, *, verify_checksums: bool = True) -> str:
    """Load only the adapters (e.g. LoRA) of checkpoint ``path``, a run with adapters, into the model's adapters
    (any saved layout); returns its directory. Collective; verified like :func:`load_pretrained_weights`. The
    base weights are not in such a checkpoint: load them first (`base_model.load_base_weights`)."""
    return _load_weights(path, chunks, adapters=True, vocab_size=None, verify_checksums=verify_checksums)


def _load_weights(path: str, chunks, *, adapters: bool, vocab_size: Optional[int], verify_checksums: bool) -> str:
    """The weights-only load of :func:`load_pretrained_weights` (the base weights) or :func:`load_adapter_weights`."""
    from megatron.core import dist_checkpointing

    from nemo_mft.megatron import unwrap

    ckpt = resolve_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    _verify(ckpt, verify_checksums)
    if len(chunks) != 1:
        raise ValueError("one model chunk per pipeline stage is supported (no virtual pipeline)")
    model = unwrap(chunks[0])
    if adapters and model.adapters is None:
        raise ValueError("load_adapter_weights needs a model with adapters (build_model(..., adapt=...))")
    # The base weights (never adapters), or the adapters alone (what a run with adapters saves as its model).
    request = {"model": _without_extra_state(model.sharded_state_dict() if adapters
                                             else model.base_sharded_state_dict())}
    check_structure(ckpt, request, weights_only=True, vocab_size=vocab_size)
    loaded = _read_on_every_rank(ckpt, dist_checkpointing.load, request, ckpt)
    _load_model_state(model if adapters else model.student, loaded["model"], ckpt)
    return ckpt


_EXTRA_STATE = "_extra_state"


def _without_extra_state(model_sharded_state: dict) -> dict:
    """``model_sharded_state`` without TransformerEngine's ``_extra_state`` entries (module docstring)."""
    return {key: value for key, value in model_sharded_state.items() if not key.endswith(_EXTRA_STATE)}


def _load_model_state(module: torch.nn.Module, state: dict, path: str) -> None:
    """``module.load_state_dict(state)``, where only ``_extra_state`` entries may be missing."""
    from nemo_mft.megatron.model import load_weights

    wrong = load_weights(module, state)
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {wrong[:5]} (missing or unexpected)")


def load_checkpoint(path: str, chunks, optimizer, scheduler, layout, *, vocab_size: Optional[int] = None,
                    verify_checksums: bool = True) -> dict[str, Any]:
    """Full resume from checkpoint directory ``path``: model, optimizer, scheduler and RNG.

    Collective. Verified like :func:`load_pretrained_weights`, the optimizer's tensors included. Returns the
    checkpoint's common values (``iteration``, ``consumed_samples``, ``base``, ...). The RNG states are
    restored only when the parallel layout is the one that saved them (else a warning).
    """
    from megatron.core import dist_checkpointing

    from nemo_mft.megatron import unwrap

    _verify(path, verify_checksums)
    common = _read_on_every_rank(path, dist_checkpointing.load_common_state_dict, path)
    same_layout = list(common.get("layout", [])) == _layout_key(layout)
    model_sd = _model_state(chunks)
    request = {"model": _without_extra_state(model_sd),
               "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True)}
    check_structure(path, request, weights_only=False, vocab_size=vocab_size)
    if same_layout:
        request["rng_state"] = _rng_object(layout, _rng_state())
    loaded = _read_on_every_rank(path, dist_checkpointing.load, request, path)
    _load_model_state(unwrap(chunks[0]), loaded["model"], path)
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    elif layout.rank == 0:
        logger.warning("checkpoint %s was saved with (tp, pp, dp) = %s, this run uses %s: RNG states are "
                       "not restored", path, common.get("layout"), _layout_key(layout))
    return {key: value for key, value in loaded.items() if key not in ("model", "optimizer", "rng_state")}
