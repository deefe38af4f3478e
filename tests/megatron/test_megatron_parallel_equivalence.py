"""TP=1 (DP=4), TP=2 (DP=2), PP=2 (DP=2) and TP=2 x PP=2 train identically (3 clipped SGD steps of MFT).

Same layout-independent initial weights and the same global micro-batches everywhere (see
megatron_harness). Checked: per-micro-batch losses and reports, the full gathered student gradients of
every step, the grad norms, the final weights, bit-identical teachers, the absolute per-token gradient
normalization (against autograd of the loss sums / global token count) and, at step 0, the loss against
the float64 reference on the TP-gathered logits.
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron_harness import LAYOUTS, NUM_MB, STEPS, TAU, TEMPERATURE, VOCAB, load_loss_reference

REFERENCE = (1, 1, False)
OTHERS = [layout for layout in LAYOUTS if layout != REFERENCE]
LOSS_REL = 1e-5
GRAD_REL = 2e-5  # of the largest |entry| of each parameter's gradient (fp32 summation-order noise ~1e-6)


def _ids(layout):
    tp, pp, sp = layout
    return f"tp{tp}pp{pp}" + ("sp" if sp else "")


@pytest.fixture(scope="module")
def equivalence(megatron_job):
    return megatron_job["equivalence"]


@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids)
def test_every_micro_batch_recorded_once(equivalence, layout):
    run = equivalence[layout]
    assert sorted(run["records"]) == list(range(STEPS * NUM_MB))
    assert run["replica_diff"] == 0.0, "DP replicas / TP copies of the same value must agree exactly"
    assert all(step["ok"] for step in run["steps"])


@pytest.mark.parametrize("layout", OTHERS, ids=_ids)
def test_per_micro_batch_losses_match(equivalence, layout):
    ref, run = equivalence[REFERENCE]["records"], equivalence[layout]["records"]
    for mb_id, expected in ref.items():
        got = run[mb_id]
        assert got["num_tokens"] == expected["num_tokens"]
        for key in ("loss", "student_ce", "teacher_acc", "mixing_weight"):
            assert got[key][1] == expected[key][1]
            assert got[key][0] == pytest.approx(expected[key][0], rel=LOSS_REL, abs=1e-6), (mb_id, key)


@pytest.mark.parametrize("layout", OTHERS, ids=_ids)
def test_step_reports_and_grad_norms_match(equivalence, layout):
    for ref, run in zip(equivalence[REFERENCE]["steps"], equivalence[layout]["steps"]):
        assert run["grad_norm"] == pytest.approx(ref["grad_norm"], rel=LOSS_REL)
        for key, (total, count) in ref["reports"].items():
            assert run["reports"][key][1] == count
            assert run["reports"][key][0] == pytest.approx(total, rel=LOSS_REL, abs=1e-6)


@pytest.mark.parametrize("layout", OTHERS, ids=_ids)
def test_full_gradients_and_weights_match(equivalence, layout):
    ref, run = equivalence[REFERENCE], equivalence[layout]
    for step in range(STEPS):
        assert run["grads"][step].keys() == ref["grads"][step].keys()
        for key, expected in ref["grads"][step].items():
            scale = float(expected.abs().max())
            assert scale > 0, key
            err = float((run["grads"][step][key] - expected).abs().max())
            assert err <= GRAD_REL * scale, (step, key, err, scale)
    for key, expected in ref["weights"].items():
        assert torch.allclose(run["weights"][key], expected, rtol=1e-5, atol=1e-6), key


def test_gradient_is_normalized_per_token_and_clipped(equivalence):
    run = equivalence[REFERENCE]
    manual, grads = run["manual_grads"], run["grads"][0]
    norm = run["steps"][0]["grad_norm"]
    manual_norm = math.sqrt(sum(float((g ** 2).sum()) for g in manual.values()))
    assert norm == pytest.approx(manual_norm, rel=1e-5), \
        "grad norm != norm of (sum of loss-sum gradients) / (global token count)"
    assert norm > 1.0, "the test wants the clipping branch (clip_grad=1.0) to act"
    coeff = 1.0 / (norm + 1e-6)
    for key, expected in manual.items():
        assert torch.allclose(grads[key], coeff * expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max())), key
    clipped_norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert clipped_norm == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids)
def test_teacher_weights_bit_identical_after_training(equivalence, layout):
    assert equivalence[layout]["teacher_unchanged"] is True
    first, last = equivalence[layout]["grads"][0], equivalence[layout]["grads"][-1]
    assert any(not torch.equal(first[k], last[k]) for k in first), "the student must have trained"


def test_step0_loss_equals_float64_reference(equivalence):
    """TP=2 x PP=2, step 0: each micro-batch's loss sum equals the reference on the gathered logits."""
    run = equivalence[(2, 2, False)]
    reference = load_loss_reference()
    assert sorted(run["captured"]) == list(range(NUM_MB))
    for mb_id, cap in run["captured"].items():
        assert cap["student"].shape[-1] == 128
        assert torch.equal(cap["student"], cap["teacher"]), "student and teacher start bit-identical"
        ref = reference.reference_mft(cap["student"], cap["teacher"], cap["labels"], tau=TAU,
                                      temperature=TEMPERATURE, loss_mask=cap["loss_mask"], vocab_size=VOCAB,
                                      reduction="sum")
        record = run["records"][mb_id]
        assert record["loss_sum"] == pytest.approx(float(ref.loss), rel=LOSS_REL)
        assert record["loss"][1] == pytest.approx(float(ref.stats["weight_sum"]))
        assert record["mixing_weight"][0] == pytest.approx(
            float(ref.stats["mixing_weight"] * ref.stats["weight_sum"]), rel=LOSS_REL)
