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
"""

from __future__ import annotations

from typing import Optional

import torch

from nemo_mft.data.jsonl import read_jsonl_rows
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
) -> TokenizedDataset:
    """Fixed-length perplexity windows over a ``{"text"}`` jsonl file (loss on every real token).

    Args:
        path: jsonl whose rows are all ``{"text": ...}`` (another format is a ``ValueError`` at its line).
        tokenizer: any :class:`~nemo_mft.data.tokenizers.Tokenizer`. seq_length: S.
        max_windows, max_tokens: optional caps (``>= 1``), see the module docstring.
    Returns:
        A :class:`TokenizedDataset` ``[W, S]``; ``source_lines`` holds the window indices 0..W-1.
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    for name, cap in (("max_windows", max_windows), ("max_tokens", max_tokens)):
        if cap is not None and cap < 1:
            raise ValueError(f"{name} must be None or >= 1, got {cap}")
    rows = read_jsonl_rows(path)
    limit = None if max_tokens is None else max_tokens + 1
    if max_windows is not None:
        by_windows = max_windows * seq_length + 1
        limit = by_windows if limit is None else min(limit, by_windows)

    stream: list[int] = []
    for row in rows:
        if row.format != "text":
            raise ValueError(f"{path}:{row.line}: evaluation text file needs {{\"text\"}} rows, got format {row.format}")
        stream.extend(tokenizer.encode(row.answer))
        stream.append(tokenizer.eos_id)
        if limit is not None and len(stream) >= limit:
            break
    if limit is not None:
        stream = stream[:limit]

    num_windows = max(0, -(-(len(stream) - 1) // seq_length))  # ceil((len - 1) / S)
    tokens = torch.full((num_windows, seq_length), tokenizer.pad_id, dtype=torch.int64)
    labels = torch.full((num_windows, seq_length), tokenizer.pad_id, dtype=torch.int64)
    loss_mask = torch.zeros((num_windows, seq_length), dtype=torch.float32)
    data = torch.tensor(stream, dtype=torch.int64)
    for k in range(num_windows):
        window = data[k * seq_length: k * seq_length + seq_length + 1]
        n = window.numel() - 1
        tokens[k, :n] = window[:-1]
        labels[k, :n] = window[1:]
        loss_mask[k, :n] = 1.0
    return TokenizedDataset(tokens, labels, loss_mask, source_lines=list(range(num_windows)))
