"""Fixed-length causal-LM samples: tokenization, loss mask, and the in-memory dataset.

Layout of one sample (``S = seq_length``)::

    full   = [bos]? + prompt_ids + answer_ids + [eos]      (length L; bos only with add_bos=True)
    full   = full[:S + 1]                                   (truncation, L' = min(L, S + 1))
    tokens[i]    = full[i]        for i <  L' - 1, else pad_id        [S] int64
    labels[i]    = full[i + 1]    for i <  L' - 1, else pad_id        [S] int64
    loss_mask[i] = 1.0 iff the LABEL full[i + 1] is an answer token or the eos, and is real  [S] float32
    position_ids = 0, 1, ..., S-1                                      [S] int64

Loss-mask boundary after the shift: let ``b = len(bos) + len(prompt_ids)`` be the index in ``full`` of
the first answer token. Then ``loss_mask[i] = 1`` exactly for ``b - 1 <= i <= L' - 2``: the position
whose INPUT is the last prompt token (``i = b - 1``) is the first one with loss, since it predicts the
first answer token; the last one with loss is the position that predicts the eos (or, when truncated,
the last kept token). Positions predicting prompt tokens (or the bos) and padding get 0. For ``{"text"}``
rows the prompt is empty, so ``b = len(bos)``: with a bos every text token and the eos get loss; without
one the first text token has no predecessor and is never a label.

Prompt and answer are tokenized separately and concatenated (no merge across the boundary), as in
NeMo's SFT datasets, so the boundary is exact in token space.

Too long (``L > S + 1``): ``on_overflow="truncate"`` (default) keeps the first ``S + 1`` tokens of
``full`` (the prompt start is kept; the end of the answer and the eos are lost) and counts the sample in
``num_truncated``; a prompt that fills the whole window leaves a sample with no loss, counted in
``num_without_loss``. ``on_overflow="error"`` raises ``ValueError`` naming the file and line instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from nemo_mft.data.jsonl import Row, read_jsonl_rows
from nemo_mft.data.shuffle import select_subset
from nemo_mft.data.tokenizers import Tokenizer

__all__ = ["OVERFLOW_POLICIES", "pack_sample", "TokenizedDataset", "build_sft_dataset", "concat_datasets"]

OVERFLOW_POLICIES = ("truncate", "error")


def pack_sample(
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    *,
    seq_length: int,
    pad_id: int,
    eos_id: int,
    bos_id: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Lay out one example (see the module docstring).

    Args:
        prompt_ids, answer_ids: token ids without special tokens.
        seq_length: S. bos_id: prepended when not ``None``. eos_id: appended after the answer.
    Returns:
        ``(tokens [S] int64, labels [S] int64, loss_mask [S] float32, truncated: bool)``.
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    head = ([] if bos_id is None else [bos_id]) + list(prompt_ids)
    full = head + list(answer_ids) + [eos_id]
    truncated = len(full) > seq_length + 1
    full = full[: seq_length + 1]
    n = len(full) - 1  # real input positions
    tokens = torch.full((seq_length,), pad_id, dtype=torch.int64)
    labels = torch.full((seq_length,), pad_id, dtype=torch.int64)
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    if n > 0:
        tokens[:n] = torch.tensor(full[:n], dtype=torch.int64)
        labels[:n] = torch.tensor(full[1:], dtype=torch.int64)
        first = max(len(head) - 1, 0)
        if first < n:
            loss_mask[first:n] = 1.0
    return tokens, labels, loss_mask, truncated


@dataclass
class TokenizedDataset:
    """An in-memory set of ``N`` fixed-length samples; ``dataset[i]`` is a dict of ``[S]`` tensors.

    Fields: ``tokens``, ``labels`` ``[N, S]`` int64; ``loss_mask`` ``[N, S]`` float32;
    ``source_lines``: the 1-based jsonl line of each sample (or, for evaluation windows, the window
    index); counters ``num_truncated`` and ``num_without_loss`` (samples whose loss_mask is all 0).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    source_lines: list[int] = field(default_factory=list)
    num_truncated: int = 0
    num_without_loss: int = 0

    def __post_init__(self) -> None:
        if self.tokens.dim() != 2 or self.tokens.shape != self.labels.shape or self.tokens.shape != self.loss_mask.shape:
            raise ValueError("tokens, labels and loss_mask must all be [N, S]")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def num_loss_tokens(self) -> int:
        """Total number of positions with loss (the tokens a perplexity is computed over)."""
        return int(self.loss_mask.sum().item())

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """``{tokens [S], labels [S], loss_mask [S] float32, position_ids [S]}``."""
        return {
            "tokens": self.tokens[index],
            "labels": self.labels[index],
            "loss_mask": self.loss_mask[index],
            "position_ids": torch.arange(self.seq_length, dtype=torch.int64),
        }


def _stack(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], seq_length: int):
    if not samples:
        empty = torch.empty((0, seq_length), dtype=torch.int64)
        return empty, empty.clone(), torch.empty((0, seq_length), dtype=torch.float32)
    return tuple(torch.stack(parts) for parts in zip(*samples))


def build_sft_dataset(
    path: str,
    tokenizer: Tokenizer,
    seq_length: int,
    *,
    max_samples: Optional[int] = None,
    seed: int = 0,
    add_bos: bool = True,
    on_overflow: str = "truncate",
) -> TokenizedDataset:
    """Read a jsonl file (any of the three formats) into fixed-length samples.

    Args:
        path: the jsonl file (see :mod:`nemo_mft.data.jsonl` for formats and errors).
        tokenizer: any :class:`~nemo_mft.data.tokenizers.Tokenizer`.
        seq_length: S, the model's sequence length.
        max_samples: the domain budget. ``None`` keeps every row. Otherwise the file's rows are shuffled
            with ``seed`` and the first ``max_samples`` kept (stored in file order): a random subset that
            is stable for a seed. Fewer rows than ``max_samples`` keeps them all.
        seed: seed of the ``max_samples`` subset (independent of the training-order shuffle).
        add_bos: prepend the tokenizer's bos; an error if it has none (pass ``add_bos=False``).
        on_overflow: ``"truncate"`` or ``"error"``, for rows longer than ``seq_length + 1`` tokens.
    Returns:
        A :class:`TokenizedDataset` of ``min(rows, max_samples)`` samples.
    """
    if on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow must be one of {list(OVERFLOW_POLICIES)}, got {on_overflow!r}")
    if add_bos and tokenizer.bos_id is None:
        raise ValueError(f"{tokenizer!r} has no bos token; use add_bos=False")
    rows: list[Row] = read_jsonl_rows(path)
    kept = [rows[i] for i in select_subset(len(rows), max_samples, seed)]

    packed, num_truncated, num_without_loss = [], 0, 0
    for row in kept:
        tokens, labels, loss_mask, truncated = pack_sample(
            tokenizer.encode(row.prompt) if row.prompt else [],
            tokenizer.encode(row.answer) if row.answer else [],
            seq_length=seq_length,
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            bos_id=tokenizer.bos_id if add_bos else None,
        )
        if truncated:
            if on_overflow == "error":
                raise ValueError(f"{path}:{row.line}: sample is longer than seq_length + 1 = {seq_length + 1} tokens")
            num_truncated += 1
        if not bool(loss_mask.any()):
            num_without_loss += 1
        packed.append((tokens, labels, loss_mask))

    tokens, labels, loss_mask = _stack(packed, seq_length)
    return TokenizedDataset(tokens, labels, loss_mask, source_lines=[r.line for r in kept],
                            num_truncated=num_truncated, num_without_loss=num_without_loss)


def concat_datasets(*datasets: TokenizedDataset) -> TokenizedDataset:
    """The samples of ``datasets`` one after another (same seq_length required); counters add up.

    ``source_lines`` are kept per sample, so they only name a line together with the part it came from.
    """
    if not datasets:
        raise ValueError("concat_datasets needs at least one dataset")
    lengths = {d.seq_length for d in datasets}
    if len(lengths) != 1:
        raise ValueError(f"cannot concatenate datasets of different seq_length {sorted(lengths)}")
    return TokenizedDataset(
        torch.cat([d.tokens for d in datasets]), torch.cat([d.labels for d in datasets]),
        torch.cat([d.loss_mask for d in datasets]),
        source_lines=[line for d in datasets for line in d.source_lines],
        num_truncated=sum(d.num_truncated for d in datasets),
        num_without_loss=sum(d.num_without_loss for d in datasets),
    )
