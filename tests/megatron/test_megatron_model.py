"""nemo_mft.megatron.model / mft_model: building, the frozen teacher's invisibility, layouts and errors."""

from __future__ import annotations

import pytest

from megatron_harness import tiny_config
from nemo_mft.megatron import GPTOptions, padded_vocab_size
from nemo_mft.megatron.model import check_supported_layout, unwrap


def test_padded_vocab_size():
    assert padded_vocab_size(100, 64, 1) == 128
    assert padded_vocab_size(128, 64, 2) == 128
    assert padded_vocab_size(129, 64, 2) == 256
    assert padded_vocab_size(50257, 128, 1) == 50304
    assert padded_vocab_size(128256, 128, 8) == 129024
    for args in ((0, 64, 1), (100, 0, 1), (100, 64, 0)):
        with pytest.raises(ValueError):
            padded_vocab_size(*args)


@pytest.mark.parametrize("field,value,match", [
    ("virtual_pipeline_model_parallel_size", 2, "virtual pipeline"),
    ("context_parallel_size", 2, "context parallelism"),
])
def test_unsupported_layouts_raise(field, value, match):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = tiny_config(1, 1)
    setattr(config, field, value)  # refused before any process group is consulted
    with pytest.raises(ValueError, match=match):
        check_supported_layout(config, get_gpt_layer_local_spec(), groups=None)


@pytest.mark.parametrize("fields,match", [
    (dict(padded_vocab_size=0, max_sequence_length=8), "padded_vocab_size must be an integer >= 1"),
    (dict(padded_vocab_size=128, max_sequence_length=0), "max_sequence_length must be an integer >= 1"),
    (dict(padded_vocab_size=128, max_sequence_length=8, position_embedding_type="alibi"), "position_embedding_type"),
    (dict(padded_vocab_size=128, max_sequence_length=8, rope_scaling_factor=0.0), "rope_scaling_factor"),
])
def test_gpt_options_validate_themselves(fields, match):
    with pytest.raises(ValueError, match=match):
        GPTOptions(**fields)


def test_unwrap_rejects_foreign_modules():
    import torch

    with pytest.raises(TypeError):
        unwrap(torch.nn.Linear(2, 2))


def test_layout_errors(megatron_job):
    errors = megatron_job["errors"]
    assert "not divisible" in (errors["world_not_divisible"] or "")
    assert "tensor_model_parallel_size=1" in (errors["tp_mismatch"] or "")
    assert "apex" in (errors["sequence_parallel_without_apex"] or "")
    assert "padded_vocab_size 127 is not divisible by the tensor-parallel size 2" in (errors["vocab_not_divisible"] or "")
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


@pytest.mark.parametrize("requested, have_te, have_gpu, expected", [
    ("auto", True, True, "transformer_engine"), ("auto", True, False, "local"), ("auto", False, True, "local"),
    ("local", True, True, "local"), ("transformer_engine", True, True, "transformer_engine"),
])
def test_transformer_impl_resolution(monkeypatch, requested, have_te, have_gpu, expected):
    from megatron.core.models.gpt import gpt_layer_specs

    from nemo_mft.megatron.model import resolve_transformer_impl

    monkeypatch.setattr(gpt_layer_specs, "HAVE_TE", have_te)
    monkeypatch.setattr("torch.cuda.is_available", lambda: have_gpu)
    assert resolve_transformer_impl(requested) == expected


@pytest.mark.parametrize("requested, have_te, have_gpu, message", [
    ("transformer_engine", False, True, "TransformerEngine is not installed"),
    ("transformer_engine", True, False, "no CUDA GPU is visible"),
    ("te", True, True, "must be one of"),
])
def test_transformer_impl_that_cannot_run_here_is_refused(monkeypatch, requested, have_te, have_gpu, message):
    from megatron.core.models.gpt import gpt_layer_specs

    from nemo_mft.megatron.model import gpt_layer_spec

    monkeypatch.setattr(gpt_layer_specs, "HAVE_TE", have_te)
    monkeypatch.setattr("torch.cuda.is_available", lambda: have_gpu)
    with pytest.raises(ValueError, match=message):
        gpt_layer_spec(requested, normalization="RMSNorm", qk_layernorm=False)


def test_auto_on_this_machine_builds_megatron_cores_local_spec():
    """Without TransformerEngine (CI) the recipe's default builds the local spec: the spec megatron-core's
    get_gpt_layer_local_spec gives, with the recipe's norm and q/k norms."""
    import torch
    from megatron.core.models.gpt import gpt_layer_specs

    from nemo_mft.config import builders
    from nemo_mft.config.schema import TRANSFORMER_IMPLS, ModelSection
    from nemo_mft.megatron.model import TRANSFORMER_IMPLS as MEGATRON_IMPLS

    assert TRANSFORMER_IMPLS == MEGATRON_IMPLS
    if gpt_layer_specs.HAVE_TE and torch.cuda.is_available():
        pytest.skip("TransformerEngine and a GPU are present: auto is the TE spec here")
    section = ModelSection(normalization="RMSNorm", qk_layernorm=True).with_scratch_defaults()
    assert section.transformer_impl == "auto"
    spec = builders.layer_spec(section)
    local = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=True)
    assert spec.submodules.input_layernorm == local.submodules.input_layernorm
    attention, local_attention = spec.submodules.self_attention.submodules, local.submodules.self_attention.submodules
    assert attention.q_layernorm == local_attention.q_layernorm and attention.linear_qkv == local_attention.linear_qkv


def test_recipe_refuses_an_unknown_transformer_impl():
    from nemo_mft.config.schema import ModelSection

    with pytest.raises(ValueError, match="model.transformer_impl must be auto or local or transformer_engine"):
        ModelSection(transformer_impl="te")
