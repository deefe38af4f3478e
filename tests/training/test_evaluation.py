"""nemo_mft.training.evaluation: the Evaluator's perplexity (data split over DP=2, padding samples, a sample
without loss tokens) equals exp(mean NLL) computed by hand in float64 from the same model's logits."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def job(training_job):
    return training_job["evaluation"]


def _hand_ppl(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> float:
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, labels[..., None]).squeeze(-1)
    return math.exp(float((nll * mask.double()).sum() / mask.double().sum()))


def test_domain_perplexity_matches_the_hand_computation(job):
    labels, mask, _ = job["dataset"]
    expected = _hand_ppl(job["logits"], labels, mask)
    assert job["spec_ppl"] == pytest.approx(expected, rel=1e-5)
    assert 1.0 < expected < 1e4


def test_general_perplexity_counts_every_token(job):
    _, _, general_labels = job["dataset"]
    expected = _hand_ppl(job["logits"][:3], general_labels, torch.ones_like(general_labels, dtype=torch.float32))
    assert job["gen_ppl"] == pytest.approx(expected, rel=1e-5)


def test_without_a_general_set_and_after_evaluation(job):
    assert math.isnan(job["no_general"])
    assert job["training_mode_restored"] is True
