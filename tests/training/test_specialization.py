import math

from nemo_mft.training.specialization import Perplexities, perplexity, tradeoff


def test_tradeoff_follows_the_paper_definitions():
    base = Perplexities(spec_ppl=20.0, gen_ppl=10.0)
    out = tradeoff(base, Perplexities(spec_ppl=12.0, gen_ppl=11.0))
    assert out["S"] == 8.0 and out["DG"] == 1.0 and out["DG_over_S"] == 1.0 / 8.0
    assert out["spec_ppl"] == 12.0 and out["gen_ppl"] == 11.0


def test_ratio_is_undefined_without_specialization():
    base = Perplexities(spec_ppl=20.0, gen_ppl=10.0)
    assert tradeoff(base, Perplexities(spec_ppl=21.0, gen_ppl=11.0))["DG_over_S"] is None
    assert tradeoff(base, base)["DG_over_S"] is None
    assert tradeoff(base, Perplexities(spec_ppl=10.0, gen_ppl=float("nan")))["DG_over_S"] is None


def test_perplexity_is_exp_of_mean_nll():
    assert math.isclose(perplexity(2.0 * math.log(3.0), 2.0), 3.0)
    assert math.isnan(perplexity(0.0, 0.0))
