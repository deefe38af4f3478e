"""The run's data, read and checked before any process group or model exists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from nemo_mft.config.schema import FinetuneConfig
from nemo_mft.data import (
    TokenizedDataset,
    Tokenizer,
    build_sft_dataset,
    build_text_eval_dataset,
    build_tokenizer,
    concat_datasets,
)

TRAIN_FILE = "training.jsonl"
VALIDATION_FILE = "validation.jsonl"


@dataclass
class RunData:
    tokenizer: Tokenizer
    train: TokenizedDataset  # the domain budget (dataset.max_samples rows), then any replay rows
    num_replay: int  # replay rows at the end of ``train`` (dataset.replay_fraction of it)
    validation: TokenizedDataset  # domain perplexity set (at most evaluation.max_eval_windows rows)
    general: Optional[TokenizedDataset]  # general-domain windows, None without evaluation.general_data


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _require_loss(dataset: TokenizedDataset, path: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"{path}: no samples")
    if dataset.num_loss_tokens == 0:
        raise ValueError(f"{path}: no sample has a token with loss within dataset.seq_length "
                         f"{dataset.seq_length} (prompts too long?)")


def load_run_data(config: FinetuneConfig) -> RunData:
    """Tokenizer, training set, domain validation set and general-domain windows.

    Errors (missing file, malformed line as ``file:line``, empty set) are raised here, so a bad
    dataset stops the run before anything distributed is started.
    """
    root, seq_length, seed = config.dataset.dataset_root, config.dataset.seq_length, config.train.seed
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset.dataset_root is not a directory: {root}")
    train_path, valid_path = os.path.join(root, TRAIN_FILE), os.path.join(root, VALIDATION_FILE)
    _require_file(train_path, "training set")
    _require_file(valid_path, "validation set")
    tokenizer = build_tokenizer(config.tokenizer.type, config.tokenizer.path)
    add_bos = tokenizer.bos_id is not None
    train = build_sft_dataset(train_path, tokenizer, seq_length, max_samples=config.dataset.max_samples,
                              seed=seed, add_bos=add_bos)
    _require_loss(train, train_path)
    num_replay = replay_rows(len(train), config.dataset.replay_fraction)
    if num_replay:
        replay_path = config.dataset.replay_data
        _require_file(replay_path, "dataset.replay_data")
        replay = build_sft_dataset(replay_path, tokenizer, seq_length, max_samples=num_replay, seed=seed,
                                   add_bos=add_bos)
        if len(replay) < num_replay:
            raise ValueError(f"{replay_path}: {len(replay)} rows, but dataset.replay_fraction "
                             f"{config.dataset.replay_fraction} of {len(train)} domain samples needs {num_replay}")
        _require_loss(replay, replay_path)
        train = concat_datasets(train, replay)
    validation = build_sft_dataset(valid_path, tokenizer, seq_length,
                                   max_samples=config.evaluation.max_eval_windows, seed=seed, add_bos=add_bos)
    _require_loss(validation, valid_path)
    general = None
    if config.evaluation.general_data:
        _require_file(config.evaluation.general_data, "evaluation.general_data")
        general = build_text_eval_dataset(config.evaluation.general_data, tokenizer, seq_length,
                                          max_windows=config.evaluation.max_eval_windows)
        _require_loss(general, config.evaluation.general_data)
    return RunData(tokenizer=tokenizer, train=train, num_replay=num_replay, validation=validation, general=general)


def replay_rows(num_domain: int, fraction: float) -> int:
    """Replay rows that make up ``fraction`` of a training set with ``num_domain`` domain rows."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
    return round(num_domain * fraction / (1.0 - fraction))
