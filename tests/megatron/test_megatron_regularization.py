"""nemo_mft.megatron.regularization: the L2-to-initial-weights baseline inside a real megatron train step.

The spawned job (TP=2 x DP=2) takes one SGD step with and without the regularizer, from the same weights and
data, with the anchors shifted so that theta - theta_0 is a known constant: the only difference between the
two updates must be -lr * weight * (theta - theta_0), on every parameter shard of every rank.
"""

from __future__ import annotations

import pytest
import torch

from nemo_mft.megatron.regularization import L2ToInitial


def test_one_step_adds_exactly_the_l2_gradient(megatron_job):
    out = megatron_job["l2_init"]
    assert out["expected_step"] != 0
    # fp32 round-off of the two updates on weights of size ~1 (LayerNorm) is ~1e-7; the step itself is 5e-4.
    assert out["max_deviation"] <= 2e-3 * abs(out["expected_step"])


def test_teacher_weights_serve_as_the_anchor_without_a_copy(megatron_job):
    out = megatron_job["l2_init"]
    assert out["num_pairs"] == out["num_params"] > 0
    assert out["anchors_are_teacher"]
    assert out["moved_student"] is not None and "not the student's initial value" in out["moved_student"]


def test_negative_weight_is_rejected():
    with pytest.raises(ValueError, match="must be >= 0"):
        L2ToInitial([], -1.0)


def test_zero_weight_leaves_gradients_alone():
    regularizer = L2ToInitial([], 0.0)
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 2.0)
    regularizer.pairs.append((param, torch.zeros(3)))
    regularizer.add_to_grads()
    assert torch.equal(param.grad, torch.full((3,), 2.0))
