"""Megatron-style data order: seeded epochs, data-parallel sharding, exact resume from consumed_samples.

The training order is one endless **global stream** of dataset indices: epoch ``e`` is a permutation of
``range(N)`` fixed by ``(seed, e)`` (re-shuffled every epoch), and the stream is epoch 0, then epoch 1,
and so on. Consecutive micro-batch steps take ``micro_batch_size * dp_size`` consecutive stream entries;
data-parallel rank ``r`` gets entries ``[r * micro_batch_size, (r + 1) * micro_batch_size)`` of each
step (as megatron's ``MegatronPretrainingSampler``). Consequences:

* ``consumed_samples`` (the global count the training loop checkpoints, advanced by
  ``global_batch_size`` per iteration) fully determines the position: resuming at ``consumed_samples=k``
  yields exactly what an uninterrupted run yields after ``k`` samples.
* Global batch ``j`` is ``stream[j * gbs : (j + 1) * gbs]`` whatever the split into ranks and
  micro-batches (``global_batch_size = micro_batch_size * num_microbatches * dp_size``).
* Every sample appears once per epoch. A step may straddle an epoch boundary (when ``N`` is not a
  multiple of the step size), so the same sample can appear twice in one global batch, from two epochs.
"""

from __future__ import annotations

from typing import Iterator

import torch

from nemo_mft.data.shuffle import permutation

__all__ = ["num_microbatches", "MicroBatchSampler"]


def num_microbatches(global_batch_size: int, micro_batch_size: int, dp_size: int) -> int:
    """``global_batch_size / (micro_batch_size * dp_size)``; ``ValueError`` unless it divides exactly."""
    for name, value in (("global_batch_size", global_batch_size), ("micro_batch_size", micro_batch_size),
                        ("dp_size", dp_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    per_step = micro_batch_size * dp_size
    if global_batch_size % per_step:
        raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of micro_batch_size x dp_size "
                         f"= {micro_batch_size} x {dp_size}")
    return global_batch_size // per_step


class MicroBatchSampler:
    """This rank's dataset indices, one micro-batch at a time (see the module docstring).

    Args:
        num_samples: N, the dataset size.
        micro_batch_size, dp_rank, dp_size: the data-parallel layout.
        seed: seed of the per-epoch shuffles. shuffle: ``False`` keeps file order in every epoch.
    """

    def __init__(self, num_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int,
                 *, shuffle: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if micro_batch_size < 1 or dp_size < 1:
            raise ValueError(f"micro_batch_size and dp_size must be >= 1, got {micro_batch_size}, {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must be in [0, {dp_size}), got {dp_rank}")
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.shuffle = shuffle
        self._cache: dict[int, torch.Tensor] = {}

    @property
    def samples_per_step(self) -> int:
        """Global samples consumed by one micro-batch step of all ranks: ``micro_batch_size * dp_size``."""
        return self.micro_batch_size * self.dp_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Dataset indices of epoch ``epoch`` in stream order, int64 ``[N]``."""
        if epoch not in self._cache:
            if len(self._cache) >= 2:  # a step touches at most two epochs when it is not longer than N
                self._cache.pop(min(self._cache))
            self._cache[epoch] = (permutation(self.num_samples, self.seed, stream="epoch", epoch=epoch)
                                  if self.shuffle else torch.arange(self.num_samples, dtype=torch.int64))
        return self._cache[epoch]

    def stream(self, start: int, count: int) -> list[int]:
        """Global stream entries ``[start, start + count)`` as dataset indices."""
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.num_samples)
            out.append(int(self.epoch_order(epoch)[offset]))
        return out

    def indices(self, consumed_samples: int = 0) -> Iterator[list[int]]:
        """Endless iterator of this rank's micro-batches (lists of ``micro_batch_size`` dataset indices),
        starting right after ``consumed_samples`` global samples (a multiple of ``samples_per_step``)."""
        if consumed_samples < 0 or consumed_samples % self.samples_per_step:
            raise ValueError(f"consumed_samples {consumed_samples} must be a non-negative multiple of "
                             f"micro_batch_size x dp_size = {self.samples_per_step}")
        start = consumed_samples + self.dp_rank * self.micro_batch_size
        while True:
            yield self.stream(start, self.micro_batch_size)
            start += self.samples_per_step
