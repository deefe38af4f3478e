"""Micro-batches as tensor dicts: collation, the training iterator, and evaluation shards.

A micro-batch is ``{"tokens": [B, S] int64, "labels": [B, S] int64, "loss_mask": [B, S] float32,
"position_ids": [B, S] int64}``. No attention mask: megatron-core's causal masking is the caller's choice.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from nemo_mft.data.samples import TokenizedDataset
from nemo_mft.data.sampler import MicroBatchSampler

__all__ = ["collate", "train_micro_batches", "eval_micro_batches"]

_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``B`` sample dicts of ``[S]`` tensors into one micro-batch of ``[B, S]`` tensors."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    return {key: torch.stack([s[key] for s in samples]).contiguous() for key in _KEYS}


def train_micro_batches(dataset: TokenizedDataset, sampler: MicroBatchSampler,
                        consumed_samples: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless iterator of this rank's training micro-batches from ``consumed_samples`` on.

    The training loop pulls ``num_microbatches`` per iteration and checkpoints ``consumed_samples``
    (``+= global_batch_size`` per iteration); calling this again with the saved count continues exactly.
    """
    if sampler.num_samples != len(dataset):
        raise ValueError(f"sampler is for {sampler.num_samples} samples, dataset has {len(dataset)}")
    for indices in sampler.indices(consumed_samples):
        yield collate([dataset[i] for i in indices])


def eval_micro_batches(dataset: TokenizedDataset, micro_batch_size: int, dp_rank: int,
                       dp_size: int) -> list[dict[str, torch.Tensor]]:
    """This rank's share of an evaluation set, in order, as full-size micro-batches.

    Step ``j`` covers dataset entries ``[j * mbs * dp, (j + 1) * mbs * dp)``; rank ``r`` takes the ``r``-th
    slice of ``mbs``. Positions past the end are filled with padding samples (``loss_mask`` all 0), so every
    rank gets the same number of micro-batches, ``ceil(N / (mbs * dp))``, and every real sample is
    evaluated exactly once across ranks.
    """
    if micro_batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
        raise ValueError(f"bad layout: micro_batch_size={micro_batch_size}, dp_rank={dp_rank}, dp_size={dp_size}")
    n, step = len(dataset), micro_batch_size * dp_size
    if n == 0:
        return []
    # Filler: token/label id 0 (valid in any vocabulary), no loss.
    filler = {key: torch.zeros_like(value) for key, value in dataset[0].items()}
    filler["position_ids"] = dataset[0]["position_ids"]
    batches = []
    for start in range(dp_rank * micro_batch_size, -(-n // step) * step, step):
        batches.append(collate([dataset[i] if i < n else filler for i in range(start, start + micro_batch_size)]))
    return batches
