"""HF Llama export: a megatron-core GPT and the exported `transformers` LlamaForCausalLM give the same logits.

`transformers` is the independent reference: it implements Llama (rotary, GQA, SwiGLU, RMSNorm) on its
own. One spawned process builds the megatron model (megatron's parallel state is process-global).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nemo_mft.config import builders
from nemo_mft.config.schema import ModelSection
from nemo_mft.export import check_llama_compatible, save_hf_llama
from nemo_mft.export import hf_llama

VOCAB = 100  # true vocabulary; the model pads to 112
SEQ = 12
LLAMA_SECTION = ModelSection(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                             ffn_hidden_size=48, normalization="RMSNorm", activation="swiglu", add_bias_linear=False,
                             rotary_base=5000, make_vocab_size_divisible_by=16).with_scratch_defaults()


def _llama(section: ModelSection = LLAMA_SECTION):
    """(TransformerConfig, GPTOptions) of the model, as the recipe's builders make them."""
    return builders.transformer_config(section), builders.gpt_options(section, vocab_size=VOCAB, seq_length=SEQ)


LLAMA = _llama()


def _megatron_logits_and_state(rank, world_size, tokens: torch.Tensor):
    from nemo_mft.megatron import build_model, init_distributed, initialize_parallel, megatron_on_cpu

    init_distributed()
    with megatron_on_cpu():
        layout = initialize_parallel(1, 1, seed=7)
        config, gpt_options = LLAMA
        gpt = build_model(config, builders.layer_spec(LLAMA_SECTION), gpt_options, groups=layout.groups,
                          with_teacher=False)[0].student.eval()
        with torch.no_grad():  # norms start at 1: perturb every tensor so a swapped mapping cannot pass
            for param in gpt.parameters():
                param.add_(0.05 * torch.randn_like(param))
            positions = torch.arange(tokens.shape[1]).expand_as(tokens)
            logits = gpt(tokens, positions, attention_mask=None)
    state = {k: v.clone() for k, v in gpt.state_dict().items() if isinstance(v, torch.Tensor)}
    return logits, state


@pytest.fixture(scope="module")
def megatron_llama():
    from dist_utils import run_distributed

    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    logits, state = run_distributed(_megatron_logits_and_state, 1, tokens)
    return tokens, logits, state


def _hf_logits(out_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def test_export_matches_megatron_logits(megatron_llama, tmp_path):
    tokens, logits, state = megatron_llama
    assert logits.shape == (2, SEQ, 112)
    out = tmp_path / "hf"
    save_hf_llama(str(out), state, *LLAMA, vocab_size=VOCAB, max_position_embeddings=SEQ, dtype="float32",
                  bos_token_id=1, eos_token_id=2)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["num_key_value_heads"] == 2 and config["rope_theta"] == 5000
    torch.testing.assert_close(_hf_logits(str(out), tokens), logits[..., :VOCAB], rtol=1e-4, atol=1e-4)


def test_sharded_export_loads(megatron_llama, tmp_path, monkeypatch):
    tokens, logits, state = megatron_llama
    monkeypatch.setattr(hf_llama, "_SHARD_BYTES", 20_000)
    out = tmp_path / "hf"
    written = save_hf_llama(str(out), state, *LLAMA, vocab_size=VOCAB, max_position_embeddings=SEQ, dtype="float32")
    assert sum(name.endswith(".safetensors") for name in written) > 2
    assert (out / "model.safetensors.index.json").exists()
    torch.testing.assert_close(_hf_logits(str(out), tokens), logits[..., :VOCAB], rtol=1e-4, atol=1e-4)


def test_bf16_export_and_tokenizer_files(megatron_llama, tmp_path):
    _, _, state = megatron_llama
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    out = tmp_path / "hf"
    save_hf_llama(str(out), state, *LLAMA, vocab_size=VOCAB, max_position_embeddings=SEQ, tokenizer_path=str(tok_dir))
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert tensors["model.embed_tokens.weight"].shape == (VOCAB, 32)
    assert tensors["lm_head.weight"].shape == (VOCAB, 32)
    assert (out / "tokenizer.json").exists()


def test_export_refuses_non_empty_directory(megatron_llama, tmp_path):
    _, _, state = megatron_llama
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf_llama(str(tmp_path), state, *LLAMA, vocab_size=VOCAB, max_position_embeddings=SEQ)
    assert (tmp_path / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("change, message", [
    (dict(normalization="LayerNorm"), "RMSNorm"),
    (dict(activation="gelu"), "swiglu"),
    (dict(add_bias_linear=True), "biases"),
    (dict(position_embedding_type="learned_absolute"), "rope"),
])
def test_non_llama_models_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        check_llama_compatible(*_llama(dataclasses.replace(LLAMA_SECTION, **change)))


def test_vocab_larger_than_model_is_rejected(megatron_llama):
    _, _, state = megatron_llama
    with pytest.raises(ValueError, match="exceeds"):
        hf_llama.convert_to_hf_llama(state, *LLAMA, vocab_size=500)
