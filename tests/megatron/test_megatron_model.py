"""nemo_mft.megatron.model / mft_model: building, the frozen teacher's invisibility, layouts and errors."""

from __future__ import annotations

import pytest

from megatron_harness import tiny_model
from nemo_mft.megatron import padded_vocab_size
from nemo_mft.megatron.model import check_supported_layout, unwrap


def test_padded_vocab_size():
    assert padded_vocab_size(100, tiny_model(1, 1)) == 128
    assert padded_vocab_size(128, tiny_model(2, 1)) == 128
    assert padded_vocab_size(129, tiny_model(2, 1)) == 256
    assert padded_vocab_size(50257, tiny_model(1, 1, make_vocab_size_divisible_by=128)) == 50304
    with pytest.raises(ValueError):
        padded_vocab_size(0, tiny_model())


@pytest.mark.parametrize("field,value,match", [
    ("virtual_pipeline_model_parallel_size", 2, "virtual pipeline"),
    ("context_parallel_size", 2, "context parallelism"),
])
def test_unsupported_layouts_raise(field, value, match):
    section = tiny_model(1, 1)
    setattr(section, field, value)  # bypass the schema's own check: build_model must refuse it too
    with pytest.raises(ValueError, match=match):
        check_supported_layout(section)


def test_unwrap_rejects_foreign_modules():
    import torch

    with pytest.raises(TypeError):
        unwrap(torch.nn.Linear(2, 2))


def test_layout_errors(megatron_job):
    errors = megatron_job["errors"]
    assert "not divisible" in (errors["world_not_divisible"] or "")
    assert "tensor_model_parallel_size=1" in (errors["tp_mismatch"] or "")
    assert "apex" in (errors["sequence_parallel_without_apex"] or "")
    assert "method must be one of" in (errors["bad_method"] or "")
    assert "layout mismatch" in (errors["teacher_mismatch"] or "")
    assert errors["teacher_match"] is None


CHECKS = [
    "teacher_at_build_equals_student", "no_teacher_in_parameters", "no_teacher_in_modules",
    "state_dict_student_only", "sharded_student_only", "ft_has_no_teacher", "state_keys_equal_plain_gpt",
    "sharded_keys_equal_plain_gpt", "state_keys_no_prefix", "teacher_eval_after_train", "teacher_frozen",
    "teacher_unchanged_after_step", "teacher_grads_none", "student_changed", "sync_teacher",
]


@pytest.mark.parametrize("check", CHECKS)
def test_teacher_is_frozen_and_invisible(megatron_job, check):
    """Each flag holds on all 4 ranks of a TP=2 x PP=2 layout (first and last stages)."""
    assert megatron_job["model"][check] is True, check


def test_logits_layout_is_batch_first_vocab_shard(megatron_job):
    assert megatron_job["model"]["logits_shape"] == [2, 16, 64]  # [B, S, 128 / TP]


def test_teacher_runs_without_dropout_or_graph(megatron_job):
    out = megatron_job["model"]
    assert out["student_dropout_active"], "the dropout model should make two student passes differ"
    assert out["teacher_deterministic_in_train_mode"]
    assert out["teacher_no_graph"]


def test_attention_is_causal(megatron_job):
    out = megatron_job["model"]
    assert out["causal_prefix_unchanged"] and out["causal_suffix_changed"]


def test_ft_model_cannot_run_a_teacher(megatron_job):
    assert "without a teacher" in (megatron_job["model"]["run_teacher_without_teacher"] or "")
