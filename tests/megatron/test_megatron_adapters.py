"""LoRA under TP/PP (tests/megatron/adapter_sections.py, in the shared 4-rank job): the same losses and adapter
gradients in every layout, the teacher is the base model with adapters off, only adapters train."""

from __future__ import annotations

import pytest
import torch

from megatron_harness import LAYOUTS

REFERENCE = (1, 1, False)


@pytest.fixture(scope="module")
def adapters(megatron_job):
    return megatron_job["adapters"]


def test_step0_is_the_base_model_and_the_teacher_is_the_student_without_adapters(adapters):
    ref = adapters[REFERENCE]
    assert all(result["zero_b_at_start"] for result in adapters.values())
    assert ref["step0_student_equals_teacher"]
    assert not any(result["has_separate_teacher"] for result in adapters.values())  # no second copy
    assert torch.equal(ref["teacher"], ref["base_only"])  # teacher = the same module, adapters off
    assert not torch.allclose(ref["student"], ref["teacher"])  # with B != 0 the adapters act


def test_lora_student_equals_merged_weights(adapters):
    ref = adapters[REFERENCE]
    torch.testing.assert_close(ref["student"], ref["merged"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [layout for layout in LAYOUTS if layout != REFERENCE])
def test_layouts_give_the_same_losses_and_adapter_gradients(adapters, layout):
    ref, other = adapters[REFERENCE], adapters[layout]
    assert other["adapter_keys"] == ref["adapter_keys"]
    assert len(ref["adapter_keys"]) == 4 * 4 * 2  # 4 layers x 4 targets x (A, B), global keys
    assert other["replica_diff"] < 1e-6
    for mb_id, record in ref["records"].items():
        assert other["records"][mb_id]["loss_sum"] == pytest.approx(record["loss_sum"], rel=1e-5)
    for step_ref, step_other in zip(ref["grads"], other["grads"]):
        for key, grad in step_ref.items():
            torch.testing.assert_close(step_other[key], grad, rtol=1e-5, atol=1e-7, msg=key)
    a_grads = [g for k, g in ref["grads"][0].items() if k.endswith("lora_a")]
    assert all(float(g.abs().max()) > 0 for g in a_grads)  # the A path is exercised


def test_only_adapters_train_and_base_weights_stay_bit_identical(adapters):
    for result in adapters.values():
        assert result["only_adapters_train"] and result["base_unchanged"]
