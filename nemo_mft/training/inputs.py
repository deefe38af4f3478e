"""The run's data, read and checked before any process group or model exists.

Every file the run reads is accounted for (:class:`~nemo_mft.data.FileAccounting`: rows read, kept,
truncated, dropped, without loss, with the first line of each kind) in ``RunData.accounting``. A file the
run cannot use stops it here with one ``ValueError`` / ``FileNotFoundError``:

* a training or replay file with no loss token, or with more than ``dataset.max_no_loss_fraction`` of
  its kept rows without an answer token with loss;
* an evaluation set (``validation.jsonl``, ``evaluation.general_data``) with nothing to score;
* rows longer than ``dataset.seq_length + 1`` tokens under ``dataset.on_overflow=error``;
* a replay file with fewer usable rows than ``dataset.replay_fraction`` needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from nemo_mft.config.schema import FinetuneConfig
from nemo_mft.data import (
    FileAccounting,
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
    # One per file read, in the order train, replay (if any), validation, general (if any).
    accounting: tuple[FileAccounting, ...] = ()

    def accounting_summary(self) -> list[str]:
        """One line per file read (:meth:`FileAccounting.summary`), for the run's log."""
        return [a.summary() for a in self.accounting]

    def accounting_dict(self) -> dict[str, dict]:
        """``{role: FileAccounting.to_dict()}`` for metrics / summary.json (roles are unique in a run)."""
        return {a.role: a.to_dict() for a in self.accounting}


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _only(dataset: TokenizedDataset) -> FileAccounting:
    """The accounting of a dataset made from one file."""
    (accounting,) = dataset.accounting
    return accounting


def _nothing_left(accounting: FileAccounting, purpose: str, seq_length: int) -> Optional[str]:
    """Why a file gives nothing to ``purpose`` ("train on", "score"), or ``None`` when it gives something."""
    if accounting.rows_kept == 0:
        return (f"{accounting.path}: nothing to {purpose}: none of its {accounting.rows_read} rows is left "
                f"({accounting.dropped} dropped as longer than dataset.seq_length + 1 = {seq_length + 1} tokens "
                f"by dataset.on_overflow=drop)")
    if accounting.loss_tokens == 0:
        first = accounting.first_without_loss
        where = accounting.where(first) if first is not None else accounting.path
        return (f"{where}: nothing to {purpose}: none of the {accounting.rows_kept} rows kept has a token with "
                f"loss within dataset.seq_length {seq_length} (prompts filling the window? texts too short?)")
    return None


def _require_loss(dataset: TokenizedDataset, purpose: str, seq_length: int) -> None:
    """A ``ValueError`` unless every file of ``dataset`` gives at least one token with loss."""
    for accounting in dataset.accounting:
        problem = _nothing_left(accounting, purpose, seq_length)
        if problem:
            raise ValueError(problem)


def _require_loss_share(accounting: FileAccounting, max_fraction: float, seq_length: int) -> None:
    """A ``ValueError`` when more than ``max_fraction`` of the file's kept rows have no answer token with loss."""
    share = accounting.without_loss_share
    if share > max_fraction:
        raise ValueError(
            f"{accounting.where(accounting.first_without_loss)}: {accounting.without_loss} of "
            f"{accounting.rows_kept} rows ({share:.1%}) have no answer token with loss within dataset.seq_length "
            f"{seq_length} (this is the first: prompt filling the window, or an empty answer); "
            f"dataset.max_no_loss_fraction is {max_fraction:g}")


def _load_training_file(path: str, role: str, tokenizer: Tokenizer, config: FinetuneConfig,
                        max_samples: Optional[int]) -> TokenizedDataset:
    """A training or replay file as samples, checked: some loss, and few rows without it."""
    seq_length = config.dataset.seq_length
    dataset = build_sft_dataset(path, tokenizer, seq_length, max_samples=max_samples, seed=config.train.seed,
                                add_bos=tokenizer.adds_bos, on_overflow=config.dataset.on_overflow,
                                role=role)
    _require_loss(dataset, "train on", seq_length)
    _require_loss_share(_only(dataset), config.dataset.max_no_loss_fraction, seq_length)
    return dataset


def _load_replay(domain_rows: int, tokenizer: Tokenizer, config: FinetuneConfig) -> Optional[TokenizedDataset]:
    """The replay rows that make up ``dataset.replay_fraction`` of the training set (``None`` for none)."""
    num_replay = replay_rows(domain_rows, config.dataset.replay_fraction)
    if not num_replay:
        return None
    path = config.dataset.replay_data
    _require_file(path, "dataset.replay_data")
    replay = _load_training_file(path, "replay", tokenizer, config, max_samples=num_replay)
    if len(replay) < num_replay:
        dropped = _only(replay).dropped
        left = f" ({dropped} dropped as too long by dataset.on_overflow=drop)" if dropped else ""
        raise ValueError(f"{path}: {len(replay)} rows{left}, but dataset.replay_fraction "
                         f"{config.dataset.replay_fraction} of {domain_rows} domain samples needs {num_replay}")
    return replay


def _load_validation(path: str, tokenizer: Tokenizer, config: FinetuneConfig) -> TokenizedDataset:
    """The domain perplexity set: at most ``evaluation.max_eval_windows`` rows, with something to score."""
    seq_length = config.dataset.seq_length
    validation = build_sft_dataset(path, tokenizer, seq_length, max_samples=config.evaluation.max_eval_windows,
                                   seed=config.train.seed, add_bos=tokenizer.adds_bos,
                                   on_overflow=config.dataset.on_overflow, role="validation")
    _require_loss(validation, "score", seq_length)
    return validation


def _load_general(tokenizer: Tokenizer, config: FinetuneConfig) -> Optional[TokenizedDataset]:
    """General-domain perplexity windows from ``evaluation.general_data`` (``None`` when it is not set)."""
    path = config.evaluation.general_data
    if not path:
        return None
    _require_file(path, "evaluation.general_data")
    general = build_text_eval_dataset(path, tokenizer, config.dataset.seq_length,
                                      max_windows=config.evaluation.max_eval_windows, role="general")
    _require_loss(general, "score", config.dataset.seq_length)
    return general


def load_run_data(config: FinetuneConfig) -> RunData:
    """Tokenizer, training set, domain validation set and general-domain windows, with their accounting.

    Errors (missing file, malformed line as ``file:line``, a file that gives nothing to train on or to
    score, see the module docstring) are raised here, so a bad dataset stops the run before anything
    distributed is started.
    """
    root = config.dataset.dataset_root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset.dataset_root is not a directory: {root}")
    train_path, valid_path = os.path.join(root, TRAIN_FILE), os.path.join(root, VALIDATION_FILE)
    _require_file(train_path, "training set")
    _require_file(valid_path, "validation set")
    tokenizer = build_tokenizer(config.tokenizer.type, config.tokenizer.path)
    train = _load_training_file(train_path, "train", tokenizer, config, max_samples=config.dataset.max_samples)
    replay = _load_replay(len(train), tokenizer, config)
    validation = _load_validation(valid_path, tokenizer, config)
    general = _load_general(tokenizer, config)
    if replay is not None:
        train = concat_datasets(train, replay)
    parts = [train, validation] + ([general] if general is not None else [])
    return RunData(tokenizer=tokenizer, train=train, num_replay=0 if replay is None else len(replay),
                   validation=validation, general=general,
                   accounting=tuple(a for part in parts for a in part.accounting))


def replay_rows(num_domain: int, fraction: float) -> int:
    """Replay rows that make up ``fraction`` of a training set with ``num_domain`` domain rows."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
    return round(num_domain * fraction / (1.0 - fraction))
