"""config.json -> HFModel -> megatron objects, and the clear refusals (no megatron world needed)."""

from __future__ import annotations

import copy

import pytest

from nemo_mft.hf import FAMILIES, describe, gpt_options, layer_spec, transformer_config

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100, "hidden_size": 32,
         "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "hidden_act": "silu", "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
         "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "attention_bias": False,
         "mlp_bias": False, "tie_word_embeddings": False}
SUPPORTED = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"


def _with(**changes) -> dict:
    config = copy.deepcopy(LLAMA)
    config.update(changes)
    return config


def test_llama_maps_to_megatron_objects():
    model = describe(LLAMA, seq_length=12)
    assert (model.head_dim, model.heads_per_group, model.rope_theta, model.rope_scaling_factor) == (8, 2, 5e5, None)
    config = transformer_config(model, tp_size=2)
    assert (config.kv_channels, config.num_query_groups, config.layernorm_epsilon) == (8, 2, 1e-5)
    assert config.gated_linear_unit and not config.add_bias_linear and not config.add_qkv_bias
    assert config.normalization == "RMSNorm" and config.calculate_per_token_loss and not config.qk_layernorm
    opts = gpt_options(model, tp_size=2, seq_length=12)
    assert (opts.padded_vocab_size, opts.rotary_base, opts.share_embeddings_and_output_weights) == (256, 500000, False)
    assert opts.rope_scaling_factor is None


def test_qwen_flags_reach_the_config_and_spec():
    from megatron.core.transformer.identity_op import IdentityOp

    qwen3 = describe(_with(architectures=["Qwen3ForCausalLM"], head_dim=16), seq_length=12)
    assert qwen3.qk_norm and transformer_config(qwen3).qk_layernorm and transformer_config(qwen3).kv_channels == 16
    assert layer_spec(qwen3).submodules.self_attention.submodules.q_layernorm is not IdentityOp
    qwen2 = describe(_with(architectures=["Qwen2ForCausalLM"]), seq_length=12)
    assert qwen2.qkv_bias and transformer_config(qwen2).add_qkv_bias
    assert layer_spec(qwen2).submodules.self_attention.submodules.q_layernorm is IdentityOp


def test_old_style_rope_fields_are_read():
    old = _with(rope_theta=10000.0, rope_scaling={"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    del old["rope_parameters"]
    model = describe(old, seq_length=12)
    assert (model.rope_theta, model.rope_scaling_factor) == (10000.0, 32.0)
    assert gpt_options(model, tp_size=1, seq_length=12).rope_scaling_factor == 32.0


@pytest.mark.parametrize("config", [
    _with(architectures=["GPT2LMHeadModel"]),
    _with(architectures=["MixtralForCausalLM"]),
    _with(architectures=["Qwen3MoeForCausalLM"]),
    _with(architectures=None),
], ids=["gpt2", "mixtral", "qwen3moe", "none"])
def test_unknown_architecture_lists_the_supported_ones(config):
    with pytest.raises(ValueError, match=SUPPORTED):
        describe(config, seq_length=12)


@pytest.mark.parametrize("config, message", [
    (_with(num_local_experts=8), "mixture-of-experts"),
    (_with(architectures=["Qwen2ForCausalLM"], num_experts=4), "mixture-of-experts"),
    (_with(architectures=["MistralForCausalLM"], sliding_window=8), "sliding-window"),
    (_with(architectures=["Qwen2ForCausalLM"], use_sliding_window=True, sliding_window=8), "sliding-window"),
    (_with(attention_bias=True), "attention_bias=true"),
    (_with(mlp_bias=True), "mlp_bias=true"),
    (_with(architectures=["Qwen3ForCausalLM"], attention_bias=True), "attention_bias=true"),
    (_with(hidden_act="gelu"), "hidden_act"),
    (_with(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "'yarn' is not supported"),
    (_with(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_theta": 5e5}), "low_freq_factor"),
    (_with(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 131072, "rope_theta": 5e5}),
     "original_max_position_embeddings"),
    (_with(layer_types=["full_attention", "chunked_attention"]), "layer_types"),
    (_with(quantization_config={"quant_method": "fp8"}), "quantized checkpoints \\(fp8\\)"),
], ids=["llama-moe", "qwen2-moe", "mistral-window", "qwen2-window", "llama-attn-bias", "llama-mlp-bias",
        "qwen3-attn-bias", "gelu", "yarn", "llama3-low", "llama3-original", "layer-types",
        "quantized"])
def test_unsupported_settings_are_refused_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        describe(config, seq_length=12)


def test_sliding_windows_at_least_the_sequence_are_accepted():
    describe(_with(architectures=["MistralForCausalLM"], sliding_window=12), seq_length=12)
    describe(_with(architectures=["MistralForCausalLM"], sliding_window=None), seq_length=4096)
    describe(_with(architectures=["Qwen2ForCausalLM"], use_sliding_window=False, sliding_window=8), seq_length=12)


def test_layouts_megatron_cannot_split_are_refused():
    model = describe(LLAMA, seq_length=12)
    with pytest.raises(ValueError, match="whole query groups"):
        transformer_config(model, tp_size=4)
    with pytest.raises(ValueError, match="pipeline size"):
        transformer_config(model, pp_size=4)


def test_every_family_is_one_entry_with_llama_names():
    assert set(FAMILIES) == set(SUPPORTED.split(", "))
    assert FAMILIES["Qwen3ForCausalLM"].layer_tensor("q_norm", 3) == "model.layers.3.self_attn.q_norm.weight"
    assert FAMILIES["Qwen2ForCausalLM"].layer_tensor("v_bias", 0) == "model.layers.0.self_attn.v_proj.bias"
    assert "q_bias" not in FAMILIES["LlamaForCausalLM"].layer_names


def test_reader_refuses_non_float_tensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    from nemo_mft.hf import SafetensorsReader

    save_file({"w": torch.zeros(2, 2, dtype=torch.int8), "n": torch.ones(4)}, str(tmp_path / "model.safetensors"))
    with SafetensorsReader(str(tmp_path)) as reader:
        assert reader.read("n", rows=(1, 3)).tolist() == [1.0, 1.0] and reader.bytes_read["n"] == 8
        with pytest.raises(ValueError, match="only BF16, F16 and F32"):
            reader.read("w")
        with pytest.raises(KeyError, match="no tensor 'x'"):
            reader.read("x")
    with pytest.raises(FileNotFoundError, match="neither"):
        SafetensorsReader(str(tmp_path / "missing"))
