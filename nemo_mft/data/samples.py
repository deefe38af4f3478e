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

Chat rows (``{"messages": [...]}``) are rendered by the tokenizer's chat template instead
(:mod:`nemo_mft.data.chat`): ``full`` is the rendered conversation as the template writes it (no bos or eos
added here), and a label gets loss exactly when it is a token some assistant turn added (its content and
the end-of-turn marker; not the generation prompt). The same shift, truncation, ``on_overflow`` and
accounting apply; such a row is without loss when no assistant token is left as a label.

Too long (``L > S + 1``): ``on_overflow="truncate"`` (default) keeps the first ``S + 1`` tokens of
``full`` (the prompt start is kept; the end of the answer and the eos are lost) and counts the row as
truncated; ``on_overflow="drop"`` leaves the row out (counted as dropped; under a ``max_samples`` budget the
next row of the seeded order takes its place); ``on_overflow="error"`` raises one ``ValueError`` naming how
many rows are too long and the first one as ``file:line``.

A row whose window holds no answer token with loss (the prompt fills the window, or the answer is empty, so
that only the eos is scored) is kept and counted as without loss. The counts travel with the dataset as a
:class:`~nemo_mft.data.accounting.FileAccounting` per file (``TokenizedDataset.accounting``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from nemo_mft.data.accounting import FileAccounting
from nemo_mft.data.chat import chat_layout
from nemo_mft.data.jsonl import Row, read_jsonl_rows
from nemo_mft.data.shuffle import subset_order
from nemo_mft.data.tokenizers import Tokenizer

__all__ = [
    "OVERFLOW_POLICIES",
    "pack_sample",
    "pack_tokens",
    "scored_answer_tokens",
    "TokenizedDataset",
    "build_sft_dataset",
    "concat_datasets",
]

OVERFLOW_POLICIES = ("truncate", "drop", "error")


def pack_tokens(
    full: Sequence[int],
    scored: Sequence[bool],
    *,
    seq_length: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Lay out a token sequence with a loss flag per token as one causal-LM sample.

    Args:
        full: the ids [L], special tokens included. scored: [L], ``True`` where ``full[j]`` gets loss as a
            label (``scored[0]`` is never used: the first token is no label). seq_length: S.
    Returns:
        ``(tokens [S] int64, labels [S] int64, loss_mask [S] float32, truncated: bool)``: ``full`` cut to
        ``S + 1`` tokens, ``tokens[i] = full[i]``, ``labels[i] = full[i + 1]``,
        ``loss_mask[i] = scored[i + 1]``, padding past the end.
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    if len(full) != len(scored):
        raise ValueError(f"full and scored must have the same length, got {len(full)} and {len(scored)}")
    truncated = len(full) > seq_length + 1
    n = min(len(full), seq_length + 1) - 1  # real input positions
    tokens = torch.full((seq_length,), pad_id, dtype=torch.int64)
    labels = torch.full((seq_length,), pad_id, dtype=torch.int64)
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    if n > 0:
        tokens[:n] = torch.tensor(list(full[:n]), dtype=torch.int64)
        labels[:n] = torch.tensor(list(full[1 : n + 1]), dtype=torch.int64)
        loss_mask[:n] = torch.tensor([float(flag) for flag in scored[1 : n + 1]], dtype=torch.float32)
    return tokens, labels, loss_mask, truncated


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
    head = ([] if bos_id is None else [bos_id]) + list(prompt_ids)
    tail = list(answer_ids) + [eos_id]
    return pack_tokens(head + tail, [False] * len(head) + [True] * len(tail), seq_length=seq_length, pad_id=pad_id)


def scored_answer_tokens(head_length: int, answer_length: int, seq_length: int) -> int:
    """How many answer tokens are labels with loss in the sample :func:`pack_sample` lays out.

    ``head_length``: bos + prompt tokens; ``answer_length``: answer tokens (the eos excluded). The answer
    occupies ``full[head_length : head_length + answer_length]``; labels are ``full[1 : L']`` with
    ``L' = min(head_length + answer_length + 1, seq_length + 1)``.
    """
    kept = min(head_length + answer_length + 1, seq_length + 1)
    return max(0, min(head_length + answer_length, kept) - max(head_length, 1))


@dataclass
class TokenizedDataset:
    """An in-memory set of ``N`` fixed-length samples; ``dataset[i]`` is a dict of ``[S]`` tensors.

    Fields: ``tokens``, ``labels`` ``[N, S]`` int64; ``loss_mask`` ``[N, S]`` float32;
    ``source_lines``: the 1-based jsonl line of each sample (or, for evaluation windows, the window
    index); ``accounting``: one :class:`FileAccounting` per source file, in the order of the samples.
    The counters ``num_truncated``, ``num_dropped`` and ``num_without_loss`` add up the files' rows.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    source_lines: list[int] = field(default_factory=list)
    accounting: tuple[FileAccounting, ...] = ()

    def __post_init__(self) -> None:
        if self.tokens.dim() != 2 or self.tokens.shape != self.labels.shape or self.tokens.shape != self.loss_mask.shape:
            raise ValueError("tokens, labels and loss_mask must all be [N, S]")
        self.accounting = tuple(self.accounting)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def num_loss_tokens(self) -> int:
        """Total number of positions with loss (the tokens a perplexity is computed over)."""
        return int(self.loss_mask.sum().item())

    @property
    def num_truncated(self) -> int:
        """Kept rows cut to ``seq_length + 1`` tokens, over all source files."""
        return sum(a.truncated for a in self.accounting)

    @property
    def num_dropped(self) -> int:
        """Rows left out as too long (``on_overflow="drop"``), over all source files."""
        return sum(a.dropped for a in self.accounting)

    @property
    def num_without_loss(self) -> int:
        """Kept rows in which no answer token gets loss, over all source files."""
        return sum(a.without_loss for a in self.accounting)

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


@dataclass(frozen=True)
class _Packed:
    """One row laid out: its ``[S]`` tensors, whether it was cut, and how many answer tokens get loss."""

    index: int  # position of the row in the file's row list
    line: int
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    truncated: bool
    answer_scored: int


def _pack_chat_row(row: Row, index: int, where: str, tokenizer: Tokenizer, seq_length: int) -> _Packed:
    """Render a chat row with the tokenizer's template and lay it out with :func:`pack_tokens`.

    No bos or eos is added (the template writes its own); errors are ``ValueError("<where>: ...")``.
    """
    try:
        layout = chat_layout(row.messages, tokenizer)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    tokens, labels, loss_mask, truncated = pack_tokens(layout.ids, layout.scored, seq_length=seq_length,
                                                       pad_id=tokenizer.pad_id)
    return _Packed(index, row.line, (tokens, labels, loss_mask), truncated, int(loss_mask.sum().item()))


def _pack_row(row: Row, index: int, tokenizer: Tokenizer, seq_length: int, bos_id: Optional[int],
              path: str) -> _Packed:
    """Tokenize one row and lay it out with :func:`pack_sample` (chat rows: :func:`_pack_chat_row`)."""
    if row.format == "chat":
        return _pack_chat_row(row, index, f"{path}:{row.line}", tokenizer, seq_length)
    prompt_ids = tokenizer.encode(row.prompt) if row.prompt else []
    answer_ids = tokenizer.encode(row.answer) if row.answer else []
    tokens, labels, loss_mask, truncated = pack_sample(
        prompt_ids, answer_ids, seq_length=seq_length, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
        bos_id=bos_id)
    head_length = len(prompt_ids) + (bos_id is not None)
    return _Packed(index, row.line, (tokens, labels, loss_mask), truncated,
                   scored_answer_tokens(head_length, len(answer_ids), seq_length))


def _take_rows(rows: list[Row], order: list[int], budget: Optional[int], pack, *,
               drop: bool) -> tuple[list[_Packed], list[int]]:
    """Pack rows in ``order`` until ``budget`` are kept (all of ``order`` when ``None``).

    With ``drop``, a row that would be cut is left out and the next one in ``order`` is taken instead.
    Returns ``(kept samples in file order, lines of the dropped rows)``.
    """
    kept: list[_Packed] = []
    dropped: list[int] = []
    for index in order:
        if budget is not None and len(kept) >= budget:
            break
        sample = pack(rows[index], index)
        if drop and sample.truncated:
            dropped.append(sample.line)
            continue
        kept.append(sample)
    kept.sort(key=lambda s: s.index)
    return kept, dropped


def _first(lines: list[int]) -> Optional[int]:
    return min(lines) if lines else None


def _account(path: str, role: str, rows_read: int, kept: list[_Packed], dropped: list[int],
             loss_tokens: int) -> FileAccounting:
    """The :class:`FileAccounting` of one file from its kept samples and dropped lines."""
    truncated = [s.line for s in kept if s.truncated]
    without_loss = [s.line for s in kept if s.answer_scored == 0]
    return FileAccounting(
        path=path, role=role, rows_read=rows_read, rows_kept=len(kept),
        truncated=len(truncated), dropped=len(dropped), without_loss=len(without_loss),
        first_truncated=_first(truncated), first_dropped=_first(dropped), first_without_loss=_first(without_loss),
        loss_tokens=loss_tokens)


def _overflow_error(accounting: FileAccounting, seq_length: int) -> ValueError:
    """The one error ``on_overflow="error"`` raises: how many rows are too long, and the first one."""
    return ValueError(
        f"{accounting.where(accounting.first_truncated)}: {accounting.truncated} of {accounting.rows_kept} rows "
        f"are longer than seq_length + 1 = {seq_length + 1} tokens (this is the first); on_overflow='error' "
        f"refuses to cut them (use 'truncate' or 'drop', or raise seq_length)")


def build_sft_dataset(
    path: str,
    tokenizer: Tokenizer,
    seq_length: int,
    *,
    max_samples: Optional[int] = None,
    seed: int = 0,
    add_bos: bool = True,
    on_overflow: str = "truncate",
    role: str = "train",
) -> TokenizedDataset:
    """Read a jsonl file (any of the four formats, chat rows included) into fixed-length samples.

    Args:
        path: the jsonl file (see :mod:`nemo_mft.data.jsonl` for formats and errors).
        tokenizer: any :class:`~nemo_mft.data.tokenizers.Tokenizer`.
        seq_length: S, the model's sequence length.
        max_samples: the domain budget. ``None`` keeps every row. Otherwise the file's rows are shuffled
            with ``seed`` and the first ``max_samples`` kept (stored in file order): a random subset that
            is stable for a seed. Fewer rows than ``max_samples`` keeps them all.
        seed: seed of the ``max_samples`` subset (independent of the training-order shuffle).
        add_bos: prepend the tokenizer's bos; an error if it has none (pass ``add_bos=False``). Chat rows
            get no bos from here: their template writes whatever the model expects.
        on_overflow: ``"truncate"``, ``"drop"`` or ``"error"``, for rows longer than ``seq_length + 1``
            tokens (see the module docstring).
        role: the file's role, recorded in its :class:`FileAccounting` (``train``, ``replay``, ...).
    Returns:
        A :class:`TokenizedDataset` of ``min(rows, max_samples)`` samples (fewer when rows are dropped
        and the file has no others to take their place), with one :class:`FileAccounting`.
    """
    if on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow must be one of {list(OVERFLOW_POLICIES)}, got {on_overflow!r}")
    if add_bos and tokenizer.bos_id is None:
        raise ValueError(f"{tokenizer!r} has no bos token; use add_bos=False")
    path = str(path)
    rows: list[Row] = read_jsonl_rows(path)
    bos_id = tokenizer.bos_id if add_bos else None

    def pack(row: Row, index: int) -> _Packed:
        return _pack_row(row, index, tokenizer, seq_length, bos_id, path)

    kept, dropped = _take_rows(rows, subset_order(len(rows), max_samples, seed), max_samples, pack,
                               drop=on_overflow == "drop")
    tokens, labels, loss_mask = _stack([s.tensors for s in kept], seq_length)
    accounting = _account(path, role, len(rows), kept, dropped, int(loss_mask.sum().item()))
    if on_overflow == "error" and accounting.truncated:
        raise _overflow_error(accounting, seq_length)
    return TokenizedDataset(tokens, labels, loss_mask, source_lines=[s.line for s in kept], accounting=(accounting,))


def concat_datasets(*datasets: TokenizedDataset) -> TokenizedDataset:
    """The samples of ``datasets`` one after another (same seq_length required); accountings are joined.

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
        accounting=tuple(a for d in datasets for a in d.accounting),
    )
