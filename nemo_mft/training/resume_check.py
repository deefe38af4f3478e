"""Resume safety: a resumed run must train the same problem as the run that wrote the checkpoint.

Every checkpoint stores the run's recipe and the sha256 of its data files (:func:`fingerprint`). On resume
the new recipe's fingerprint is compared with the stored one (:func:`changed_keys`) before anything is
built or written: a change of the training math is refused with the list of differing keys, unless the
recipe names those keys in ``checkpoint.resume_allow_changes``.

What is compared: everything except the keys in :data:`FREE_KEYS`, which do not change the math (where
the run logs and saves, how often it evaluates, the kernel choice, the parallel layout, which
dist-checkpointing reshards) or whose content is compared through a hash instead (data file paths).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Optional

from nemo_mft.config.schema import FinetuneConfig

__all__ = ["FREE_KEYS", "IMPLICIT_BEFORE", "fingerprint", "changed_keys", "file_sha256"]

# Exact keys or whole sections ("logger") that a resume may change freely.
FREE_KEYS = (
    "logger", "checkpoint",
    "train.exit_interval", "train.micro_batch_size", "train.train_iters",
    "evaluation.eval_interval",
    "mft.impl", "mft.inplace_grad",
    "model.tensor_model_parallel_size", "model.pipeline_model_parallel_size", "model.sequence_parallel",
    "dataset.dataset_root", "dataset.replay_data", "evaluation.general_data", "tokenizer.path",
)


# Keys added to the recipe after checkpoints were first written, with the value they implicitly had
# before: a checkpoint that stores no such key is compared as if it stored that value.
NOT_RECORDED = object()  # a key whose value a checkpoint of an older nemo-mft cannot tell: not compared
IMPLICIT_BEFORE = {
    "model.layernorm_epsilon": 1e-5, "model.add_qkv_bias": False, "model.qk_layernorm": False,
    "model.rope_scaling_factor": None, "model.vocab_size": None, "peft.method": "none", "peft.dim": 16,
    "peft.alpha": 32.0, "peft.dropout": 0.0,
    "peft.target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
    "data.base_model": NOT_RECORDED,
}


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def _data_files(config: FinetuneConfig) -> dict[str, Optional[str]]:
    from nemo_mft.training.inputs import TRAIN_FILE, VALIDATION_FILE

    root = config.dataset.dataset_root
    from nemo_mft.data.tokenizers import resolve_tokenizer_file

    hf_tokenizer = config.tokenizer.type == "huggingface"
    tokenizer = resolve_tokenizer_file(config.tokenizer.path) if hf_tokenizer else None
    return {"training": os.path.join(root, TRAIN_FILE), "validation": os.path.join(root, VALIDATION_FILE),
            "replay": config.dataset.replay_data if config.dataset.replay_fraction > 0 else None,
            "general": config.evaluation.general_data, "tokenizer": tokenizer}


def fingerprint(config: FinetuneConfig, base_model_sha256: Optional[str] = None) -> dict[str, Any]:
    """The flat recipe (``section.key`` -> value), the effective LR decay length, ``data.<role>`` -> sha256
    of each data file (None when the role is unused) and ``data.base_model`` -> the base model's
    `base_model.content_fingerprint` (the teacher, and with LoRA what the adapters belong to). Plain
    JSON-able values."""
    from omegaconf import OmegaConf

    flat = _flatten(OmegaConf.to_container(OmegaConf.structured(config), resolve=True))
    # The schedule's length: scheduler.lr_decay_iters, or train.train_iters when that is null.
    flat["scheduler.lr_decay_iters"] = config.scheduler.lr_decay_iters or config.train.train_iters
    for role, path in _data_files(config).items():
        flat[f"data.{role}"] = None if not path else file_sha256(path)
    flat["data.base_model"] = base_model_sha256
    return flat


def _is_free(key: str, allowed: Iterable[str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in (*FREE_KEYS, *allowed))


def changed_keys(stored: dict[str, Any], current: dict[str, Any], allowed: Iterable[str] = ()) -> list[str]:
    """``key: stored -> current`` for every compared key whose value differs (sorted), the allowed ones
    and :data:`FREE_KEYS` excepted. A key present on one side only counts as changed."""
    allowed = tuple(allowed)
    changes = []
    for key in sorted(set(stored) | set(current)):
        if _is_free(key, allowed):
            continue
        before = stored.get(key, IMPLICIT_BEFORE.get(key, "<absent>"))
        if before is NOT_RECORDED:
            continue
        after = current.get(key, "<absent>")
        if before != after:
            if key.startswith("data."):
                before, after = (v[:12] if isinstance(v, str) and len(v) == 64 else v for v in (before, after))
                key = f"{key} (sha256)"
            changes.append(f"{key}: {before!r} -> {after!r}")
    return changes
