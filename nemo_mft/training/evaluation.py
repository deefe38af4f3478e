"""Perplexity of the student on the domain validation set and the general-domain windows."""

from __future__ import annotations

from typing import Optional

import torch

from nemo_mft.data import TokenizedDataset, eval_micro_batches
from nemo_mft.training.specialization import Perplexities, perplexity


class Evaluator:
    """Splits both evaluation sets over the data-parallel ranks once; :meth:`evaluate` is collective.

    ``forward_step`` comes from ``make_forward_step(..., evaluate=True)``: student only, the loss is the
    cross-entropy summed over loss-mask tokens, so the perplexity is exp(sum / count) over the whole set.
    ``groups``: the run's process groups (``ParallelLayout.groups``); the sets are split over ``groups.dp``.
    """

    def __init__(self, forward_step, validation: TokenizedDataset, general: Optional[TokenizedDataset], *,
                 groups, micro_batch_size: int, seq_length: int) -> None:
        self.forward_step = forward_step
        self.groups = groups
        self.micro_batch_size = micro_batch_size
        self.seq_length = seq_length
        dp_rank, dp_size = groups.dp.rank(), groups.dp.size()
        self.spec_batches = eval_micro_batches(validation, micro_batch_size, dp_rank, dp_size)
        self.general_batches = (None if general is None
                                else eval_micro_batches(general, micro_batch_size, dp_rank, dp_size))

    def _perplexity(self, chunks, batches) -> float:
        from nemo_mft.megatron import run_microbatches

        reports = run_microbatches(self.forward_step, iter(batches), chunks, groups=self.groups,
                                   num_microbatches=len(batches),
                                   seq_length=self.seq_length, micro_batch_size=self.micro_batch_size,
                                   forward_only=True)
        nll_sum, count = reports["loss"]
        return perplexity(nll_sum, count)

    def evaluate(self, chunks) -> Perplexities:
        for chunk in chunks:
            chunk.eval()
        try:
            with torch.no_grad():
                spec = self._perplexity(chunks, self.spec_batches)
                gen = (float("nan") if self.general_batches is None
                       else self._perplexity(chunks, self.general_batches))
        finally:
            for chunk in chunks:
                chunk.train()
        return Perplexities(spec_ppl=spec, gen_ppl=gen)
