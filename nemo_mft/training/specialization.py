"""The paper's trade-off numbers: specialization S, degeneralization DG and their ratio.

S = PPL_spec(base) - PPL_spec(tuned)   (how much better on the domain; > 0 is good)
DG = PPL_gen(tuned) - PPL_gen(base)    (how much worse on general text; lower is better)
DG/S is the headline (lower is better); it is undefined (None) when S <= 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Perplexities:
    spec_ppl: float  # perplexity on the held-out specialized-domain set
    gen_ppl: float  # perplexity on the general-domain set (nan when none is configured)


def perplexity(nll_sum: float, num_tokens: float) -> float:
    """exp(mean negative log-likelihood in nats); nan without tokens."""
    return math.exp(nll_sum / num_tokens) if num_tokens > 0 else float("nan")


def tradeoff(base: Perplexities, tuned: Perplexities) -> dict:
    """Raw perplexities with S, DG and DG_over_S (None when S <= 0 or a value is not finite)."""
    s = base.spec_ppl - tuned.spec_ppl
    dg = tuned.gen_ppl - base.gen_ppl
    ratio = dg / s if s > 0 and math.isfinite(dg) else None
    return {**asdict(tuned), "S": s, "DG": dg, "DG_over_S": ratio}
