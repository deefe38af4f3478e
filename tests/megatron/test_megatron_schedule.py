"""nemo_mft.megatron.schedule: every method trains and evaluates through megatron's 1F1B on TP=2 x PP=2.

Evaluation runs the student alone (stages exchange [S, B, H]); training with a teacher exchanges
[S, B, 2H] (the schedule's adjust_tensor_shapes_fn). Reports are summed over micro-batches and DP ranks
and identical on every rank.
"""

from __future__ import annotations

import math

import pytest

from megatron_harness import NUM_MB
from nemo_mft.methods import METHODS


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_evaluates(megatron_job, method):
    out = megatron_job["methods"][method]
    if method == "kd":
        # Plain distillation from the student's own initial weights: target = prediction, nothing to learn
        # (Adam still moves the weights: it normalizes the round-off-sized gradient to lr-sized steps).
        assert out["ok"] and out["grad_norm"] < 1e-6 and abs(out["train"]["loss"][0]) < 1e-4
        return
    assert out["ok"] and math.isfinite(out["grad_norm"]) and out["grad_norm"] > 0
    assert out["same_on_all_ranks"]
    expected_keys = {"loss", "student_ce"} if method == "ft" else {"loss", "student_ce", "teacher_acc", "mixing_weight"}
    assert set(out["train"]) == expected_keys
    for reports in (out["eval_before"], out["train"], out["eval_after"]):
        for total, count in reports.values():
            assert math.isfinite(total) and count > 0
    # Same weights and data before the step: the eval loss is the training step's student CE.
    assert out["eval_before"]["loss"] == pytest.approx(out["train"]["student_ce"], rel=1e-6)
    assert out["eval_before"]["loss"] == out["eval_before"]["student_ce"]
    # One step on these micro-batches lowers the student's cross-entropy on them.
    assert out["eval_after"]["loss"][0] < out["eval_before"]["loss"][0]


def test_methods_share_data_and_initial_weights(megatron_job):
    runs = megatron_job["methods"]
    assert len({tuple(runs[m]["eval_before"]["loss"]) for m in METHODS}) == 1
    assert runs["ft"]["train"]["loss"] == runs["ft"]["train"]["student_ce"]
    assert runs["kd"]["train"]["mixing_weight"][0] < runs["mft"]["train"]["mixing_weight"][0]
    assert runs["kd"]["train"]["loss"][0] != runs["mft"]["train"]["loss"][0]


def test_token_counts_cover_all_micro_batches(megatron_job):
    from megatron_harness import microbatch

    expected = sum(float(microbatch(j)["loss_mask"].sum()) for j in range(NUM_MB))
    for method in METHODS:
        assert megatron_job["methods"][method]["train"]["loss"][1] == expected
