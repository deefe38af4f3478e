"""General-domain perplexity windows from a ``{"text"}`` jsonl file.

All texts are tokenized and concatenated, each followed by the eos, into one stream
``t_1 + [eos] + t_2 + [eos] + ...`` (no bos). The stream is cut into windows of ``S + 1`` tokens with
stride ``S`` (consecutive windows share one token), so every stream token after the first is a label
exactly once::

    window k     = stream[k*S : k*S + S + 1]
    tokens[i]    = window[i],  labels[i] = window[i + 1],  loss_mask[i] = 1   for i < len(window) - 1
    (the last window may be shorter: the rest is pad_id with loss_mask 0)

Caps: ``max_tokens`` limits the scored tokens (the stream is cut to ``max_tokens + 1`` tokens, so exactly
``min(max_tokens, len(stream) - 1)`` labels are scored), and ``max_windows`` the number of windows.

The file's :class:`~nemo_mft.data.accounting.FileAccounting` counts as kept the rows whose tokens reach the
stream before a cap stops it; windows cut no row by ``seq_length``, so nothing is truncated or dropped, and
every kept row's tokens (its eos at least) are labels, except the stream's very first token.
"""

from __future__ import annotations

from typing import Optional

import torch

from nemo_mft.data.accounting import FileAccounting
from nemo_mft.data.jsonl import Row, read_jsonl_rows
from nemo_mft.data.samples import TokenizedDataset
from nemo_mft.data.tokenizers import Tokenizer

__all__ = ["build_text_eval_dataset"]


def build_text_eval_dataset(
    path: str,
    tokenizer: Tokenizer,
    seq_length: int,
    *,
    max_windows: Optional[int] = None,
    max_tokens: Optional[int] = None,
    role: str = "general",
) -> TokenizedDataset:
    """Fixed-length perplexity windows over a ``{"text"}`` jsonl file (loss on every real token).

    Args:
        path: jsonl whose rows are all ``{"text": ...}`` (another format is a ``ValueError`` at its line).
        tokenizer: any :class:`~nemo_mft.data.tokenizers.Tokenizer`. seq_length: S.
        max_windows, max_tokens: optional caps (``>= 1``), see the module docstring.
        role: the file's role, recorded in its :class:`FileAccounting`.
    Returns:
        A :class:`TokenizedDataset` ``[W, S]``; ``source_lines`` holds the window indices 0..W-1.
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    for name, cap in (("max_windows", max_windows), ("max_tokens", max_tokens)):
        if cap is not None and cap < 1:
            raise ValueError(f"{name} must be None or >= 1, got {cap}")
    path = str(path)
    rows = read_jsonl_rows(path)
    _require_text_rows(rows, path)
    stream, rows_used = _token_stream(rows, tokenizer, _stream_limit(seq_length, max_windows, max_tokens))
    tokens, labels, loss_mask = _cut_windows(stream, seq_length, tokenizer.pad_id)
    accounting = FileAccounting(path=path, role=role, rows_read=len(rows), rows_kept=rows_used,
                                loss_tokens=int(loss_mask.sum().item()))
    return TokenizedDataset(tokens, labels, loss_mask, source_lines=list(range(len(tokens))),
                            accounting=(accounting,))


def _stream_limit(seq_length: int, max_windows: Optional[int], max_tokens: Optional[int]) -> Optional[int]:
    """Stream tokens the caps allow (``None``: no cap): ``max_tokens + 1`` and ``max_windows * S + 1``."""
    limit = None if max_tokens is None else max_tokens + 1
    if max_windows is not None:
        by_windows = max_windows * seq_length + 1
        limit = by_windows if limit is None else min(limit, by_windows)
    return limit


def _require_text_rows(rows: list[Row], path: str) -> None:
    """Every row of the file is a ``{"text"}`` row (even past a cap), else ``ValueError`` at the first other."""
    for row in rows:
        if row.format != "text":
            raise ValueError(f"{path}:{row.line}: evaluation text file needs {{\"text\"}} rows, got format {row.format}")


def _token_stream(rows: list[Row], tokenizer: Tokenizer, limit: Optional[int]) -> tuple[list[int], int]:
    """``(t_1 + [eos] + t_2 + [eos] + ...)[:limit]`` and how many rows reached it."""
    stream: list[int] = []
    used = 0
    for row in rows:
        if limit is not None and len(stream) >= limit:
            break
        stream.extend(tokenizer.encode(row.answer))
        stream.append(tokenizer.eos_id)
        used += 1
    return (stream if limit is None else stream[:limit]), used


def _cut_windows(stream: list[int], seq_length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows of ``S + 1`` stream tokens with stride ``S``: ``(tokens, labels, loss_mask)``, each ``[W, S]``."""
    num_windows = max(0, -(-(len(stream) - 1) // seq_length))  # ceil((len - 1) / S)
    tokens = torch.full((num_windows, seq_length), pad_id, dtype=torch.int64)
    labels = torch.full((num_windows, seq_length), pad_id, dtype=torch.int64)
    loss_mask = torch.zeros((num_windows, seq_length), dtype=torch.float32)
    data = torch.tensor(stream, dtype=torch.int64)
    for k in range(num_windows):
        window = data[k * seq_length: k * seq_length + seq_length + 1]
        n = window.numel() - 1
        tokens[k, :n] = window[:-1]
        labels[k, :n] = window[1:]
        loss_mask[k, :n] = 1.0
    return tokens, labels, loss_mask
