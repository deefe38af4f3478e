"""Seeded, platform-independent permutations: the only source of randomness in the data layer.

Each permutation gets its own torch.Generator seeded from a hash of ``(stream, seed, epoch)``, so
different uses (the ``max_samples`` subset, each training epoch) never share a random stream, and
``seed=1, epoch=0`` is unrelated to ``seed=0, epoch=1`` (a plain ``seed + epoch`` would make them equal).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

__all__ = ["derive_seed", "permutation", "select_subset", "subset_order"]


def derive_seed(stream: str, seed: int, epoch: int = 0) -> int:
    """A 63-bit generator seed from ``(stream, seed, epoch)``; stable across runs, hosts and versions."""
    digest = hashlib.sha256(f"nemo_mft.data/{stream}/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def permutation(n: int, seed: int, *, stream: str, epoch: int = 0) -> torch.Tensor:
    """A permutation of ``range(n)`` as an int64 tensor ``[n]``, fixed by ``(stream, seed, epoch)``."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(stream, seed, epoch))
    return torch.randperm(n, generator=generator, dtype=torch.int64)


def _check_budget(max_samples: Optional[int]) -> None:
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be None or >= 1, got {max_samples}")


def subset_order(num_rows: int, max_samples: Optional[int], seed: int) -> list[int]:
    """Every row index ``[num_rows]``, in the order a ``max_samples`` budget takes them.

    File order when there is no budget or it covers every row; otherwise the seeded permutation, so that
    its first ``max_samples`` entries are :func:`select_subset` and the entries after them are the
    stand-ins, in order, for rows that are turned down (e.g. dropped as too long).
    """
    _check_budget(max_samples)
    if max_samples is None or max_samples >= num_rows:
        return list(range(num_rows))
    return permutation(num_rows, seed, stream="subset").tolist()


def select_subset(num_rows: int, max_samples: Optional[int], seed: int) -> list[int]:
    """Row indices kept under a ``max_samples`` budget, in file order.

    Shuffle ``range(num_rows)`` with ``seed`` and keep the first ``max_samples``, then sort: a random
    subset that is stable for a seed, and nested (the subset for 100 lies inside the one for 500).
    ``max_samples=None`` or ``>= num_rows`` keeps every row, in file order.
    """
    return sorted(subset_order(num_rows, max_samples, seed)[:max_samples])
