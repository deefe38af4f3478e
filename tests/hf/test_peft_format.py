"""megatron LoRA adapters -> PEFT's tensors and adapter_config.json, on small random tensors (no model built).

The fused QKV B is split by a hand-written loop over the query groups (not `convert.split_qkv`), fc1's B in
halves; A is shared. Merging in megatron space then converting equals W + alpha/r B A on the HF side.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from nemo_mft.hf import describe, megatron_to_hf
from nemo_mft.hf.peft_format import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_config, hf_target_modules, lora_to_peft,
                                     merge_lora, save_peft_dir)
from nemo_mft.peft import LORA_TARGETS, LoRAConfig

# 4 query heads in 2 groups (r = 2 heads per group), head dim 3 (Qwen3: head_dim != hidden / heads), f = 5.
H, NQ, NG, D, F, LAYERS, VOCAB = 8, 4, 2, 3, 5, 2, 11
CONFIGS = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": D},
}


def _model(name: str):
    config = {**CONFIGS[name], "hidden_size": H if name == "qwen3" else NQ * D, "intermediate_size": F,
              "num_hidden_layers": LAYERS, "num_attention_heads": NQ, "num_key_value_heads": NG, "vocab_size": VOCAB,
              "rms_norm_eps": 1e-6, "max_position_embeddings": 16, "rope_theta": 10000.0}
    return describe(config, seq_length=1)


def _adapters(model, lora: LoRAConfig, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    h, r = model.hidden_size, lora.dim
    shapes = {"self_attention.linear_qkv": (h, NG * (NQ // NG + 2) * D), "self_attention.linear_proj": (NQ * D, h),
              "mlp.linear_fc1": (h, 2 * F), "mlp.linear_fc2": (F, h)}
    out = {}
    for layer in range(LAYERS):
        for target in lora.target_modules:
            path = {"linear_qkv": "self_attention.linear_qkv", "linear_proj": "self_attention.linear_proj",
                    "linear_fc1": "mlp.linear_fc1", "linear_fc2": "mlp.linear_fc2"}[target]
            fan_in, fan_out = shapes[path]
            out[f"decoder.layers.{layer}.{path}.lora_a"] = torch.randn(r, fan_in, generator=gen)
            out[f"decoder.layers.{layer}.{path}.lora_b"] = torch.randn(fan_out, r, generator=gen)
    return out


def _hand_split_qkv(b: torch.Tensor):
    """Rows of the fused B per query group g: its NQ/NG query heads, its key head, its value head."""
    per = NQ // NG
    q, k, v = [], [], []
    for g in range(NG):
        start = g * (per + 2) * D
        q.append(b[start:start + per * D])
        k.append(b[start + per * D:start + (per + 1) * D])
        v.append(b[start + (per + 1) * D:start + (per + 2) * D])
    return torch.cat(q), torch.cat(k), torch.cat(v)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_peft_tensors_split_like_the_weights(name):
    model, lora = _model(name), LoRAConfig(dim=3, alpha=6.0)
    adapters = _adapters(model, lora)
    peft = lora_to_peft(adapters, model, lora)
    assert len(peft) == LAYERS * 7 * 2
    for layer in range(LAYERS):
        src, dst = f"decoder.layers.{layer}.", f"base_model.model.model.layers.{layer}."

        def pair(module):
            return peft[f"{dst}{module}.lora_A.weight"], peft[f"{dst}{module}.lora_B.weight"]

        a, b = adapters[src + "self_attention.linear_qkv.lora_a"], adapters[src + "self_attention.linear_qkv.lora_b"]
        for module, part in zip(("q_proj", "k_proj", "v_proj"), _hand_split_qkv(b)):
            got_a, got_b = pair(f"self_attn.{module}")
            assert torch.equal(got_a, a) and torch.equal(got_b, part), module
        assert pair("self_attn.q_proj")[1].shape == (NQ * D, 3) and pair("self_attn.k_proj")[1].shape == (NG * D, 3)
        a, b = adapters[src + "mlp.linear_fc1.lora_a"], adapters[src + "mlp.linear_fc1.lora_b"]
        for module, part in (("gate_proj", b[:F]), ("up_proj", b[F:])):
            got_a, got_b = pair(f"mlp.{module}")
            assert torch.equal(got_a, a) and torch.equal(got_b, part), module
        for module, path in (("self_attn.o_proj", "self_attention.linear_proj"), ("mlp.down_proj", "mlp.linear_fc2")):
            got_a, got_b = pair(module)
            assert torch.equal(got_a, adapters[f"{src}{path}.lora_a"]) and torch.equal(got_b,
                                                                                      adapters[f"{src}{path}.lora_b"])
    # Every tensor owns its storage (safetensors refuses shared ones): the shared A is copied per projection.
    pointers = [t.untyped_storage().data_ptr() for t in peft.values()]
    assert len(set(pointers)) == len(pointers)


def _full_state(model, seed: int = 1) -> dict:
    """A random full (TP=1) megatron GPTModel state of ``model`` (the names `megatron_to_hf` reads)."""
    gen = torch.Generator().manual_seed(seed)
    h = model.hidden_size
    state = {"embedding.word_embeddings.weight": torch.randn(16, h, generator=gen),
             "decoder.final_layernorm.weight": torch.randn(h, generator=gen),
             "output_layer.weight": torch.randn(16, h, generator=gen)}
    for i in range(LAYERS):
        for sub, shape in (("input_layernorm.weight", (h,)), ("pre_mlp_layernorm.weight", (h,)),
                           ("self_attention.q_layernorm.weight", (D,)), ("self_attention.k_layernorm.weight", (D,)),
                           ("self_attention.linear_qkv.weight", (NG * (NQ // NG + 2) * D, h)),
                           ("self_attention.linear_proj.weight", (h, NQ * D)), ("mlp.linear_fc1.weight", (2 * F, h)),
                           ("mlp.linear_fc2.weight", (h, F))):
            state[f"decoder.layers.{i}.{sub}"] = torch.randn(*shape, generator=gen)
    return state


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_merging_in_megatron_space_equals_merging_each_hf_projection(name):
    model, lora = _model(name), LoRAConfig(dim=2, alpha=5.0, target_modules=("linear_qkv", "linear_fc1", "linear_fc2"))
    state, adapters = _full_state(model), _adapters(model, lora)
    merged = megatron_to_hf(merge_lora(state, adapters, model, lora), model)
    plain = megatron_to_hf(state, model)
    peft = lora_to_peft(adapters, model, lora)
    adapted = set()
    for key in peft:
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            a, b = peft[key], peft[key.replace("lora_A", "lora_B")]
            expected = plain[f"{module}.weight"] + 2.5 * b @ a
            torch.testing.assert_close(merged[f"{module}.weight"], expected, rtol=1e-6, atol=1e-6)
            adapted.add(f"{module}.weight")
    assert len(adapted) == LAYERS * 6  # q, k, v, gate, up, down
    for key in set(plain) - adapted:  # o_proj (not a target), norms, embeddings: unchanged
        assert torch.equal(merged[key], plain[key]), key


def test_target_modules_and_adapter_config(tmp_path):
    model = _model("llama")
    lora = LoRAConfig(dim=4, alpha=8.0, dropout=0.1, target_modules=("linear_fc2", "linear_qkv"))
    assert hf_target_modules(model, lora) == ["q_proj", "k_proj", "v_proj", "down_proj"]
    assert hf_target_modules(model, LoRAConfig(target_modules=LORA_TARGETS)) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = lora_to_peft(_adapters(model, lora), model, lora)
    assert {k.split(".")[-3] for k in peft} == {"q_proj", "k_proj", "v_proj", "down_proj"}
    config = adapter_config(model, lora, base_model_name_or_path="/models/base")
    assert config["lora_alpha"] == 8 and isinstance(config["lora_alpha"], int)
    assert adapter_config(model, LoRAConfig(dim=4, alpha=6.5), base_model_name_or_path=None)["lora_alpha"] == 6.5
    written = save_peft_dir(str(tmp_path / "out"), peft, config, dtype="bfloat16")
    assert sorted(os.listdir(tmp_path / "out")) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    assert written == [str(tmp_path / "out" / ADAPTER_CONFIG), str(tmp_path / "out" / ADAPTER_WEIGHTS)]
    from safetensors.torch import load_file

    loaded = load_file(str(tmp_path / "out" / ADAPTER_WEIGHTS))
    assert sorted(loaded) == sorted(peft) and all(t.dtype == torch.bfloat16 for t in loaded.values())
    assert json.loads((tmp_path / "out" / ADAPTER_CONFIG).read_text()) == config
    with pytest.raises(FileExistsError, match="is not empty"):
        save_peft_dir(str(tmp_path / "out"), peft, config)
    # peft 0.21 reads it as the LoraConfig it describes.
    peft_lib = pytest.importorskip("peft")
    loaded_config = peft_lib.LoraConfig.from_pretrained(str(tmp_path / "out"))
    assert (loaded_config.r, loaded_config.lora_alpha, loaded_config.lora_dropout) == (4, 8, 0.1)
    assert set(loaded_config.target_modules) == {"q_proj", "k_proj", "v_proj", "down_proj"}
    assert loaded_config.peft_type == peft_lib.PeftType.LORA and loaded_config.task_type == "CAUSAL_LM"
    assert loaded_config.base_model_name_or_path == "/models/base" and not loaded_config.use_rslora


def test_adapter_state_errors():
    model, lora = _model("llama"), LoRAConfig(dim=2, alpha=4.0)
    adapters = _adapters(model, lora)
    missing = {k: v for k, v in adapters.items() if "layers.1.mlp.linear_fc2.lora_b" not in k}
    with pytest.raises(ValueError, match="no decoder.layers.1.mlp.linear_fc2.lora_b"):
        lora_to_peft(missing, model, lora)
    tp2 = dict(adapters)
    tp2["decoder.layers.0.self_attention.linear_qkv.lora_b"] = adapters[
        "decoder.layers.0.self_attention.linear_qkv.lora_b"][:12]
    with pytest.raises(ValueError, match="is the adapter state TP=1"):
        lora_to_peft(tp2, model, lora)
    with pytest.raises(ValueError, match="outside the LoRA settings"):
        lora_to_peft(adapters, model, LoRAConfig(dim=2, alpha=4.0, target_modules=("linear_qkv",)))
    with pytest.raises(ValueError, match="rank 3"):
        lora_to_peft(adapters, model, LoRAConfig(dim=3, alpha=4.0))
