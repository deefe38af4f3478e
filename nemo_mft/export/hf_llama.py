"""Megatron-core GPT weights -> a Hugging Face Llama checkpoint (what NIM and vLLM load).

Only Llama-class models convert: RMSNorm, SwiGLU, rotary embeddings, no linear biases. The input is the
full (unsharded, TP=1/PP=1) state dict of a megatron-core ``GPTModel`` with either the local layer spec
(``input_layernorm.weight``) or TransformerEngine's (norm fused into ``linear_qkv.layer_norm_weight``),
described by the model's ``TransformerConfig`` and `nemo_mft.megatron.GPTOptions`.

Name and layout mapping, per layer i (h = hidden size, d = head dim, nq heads, ng query groups):

    decoder.layers.i.input_layernorm.weight        -> model.layers.i.input_layernorm.weight
    decoder.layers.i.self_attention.linear_qkv     -> q_proj / k_proj / v_proj: megatron stores the rows
        per query group as [nq/ng query heads, 1 key head, 1 value head] x d; HF keeps them in three
        matrices. No rotary permutation is needed: megatron's default (rotary_interleaved=False) rotates
        halves, exactly as HF's Llama does.
    decoder.layers.i.self_attention.linear_proj    -> o_proj
    decoder.layers.i.pre_mlp_layernorm.weight      -> post_attention_layernorm
    decoder.layers.i.mlp.linear_fc1                -> [gate_proj; up_proj] (megatron's GLU: act(x1) * x2)
    decoder.layers.i.mlp.linear_fc2                -> down_proj
    embedding / final_layernorm / output_layer     -> embed_tokens / norm / lm_head, padding rows cut off
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from nemo_mft.hf.checkpoint_io import save_hf_dir
from nemo_mft.megatron.model import GPTOptions

__all__ = ["check_llama_compatible", "llama_config", "convert_to_hf_llama", "save_hf_llama"]

_SHARD_BYTES = 5 * 1024**3  # HF's default max shard size


def check_llama_compatible(config: TransformerConfig, gpt: GPTOptions) -> None:
    """ValueError naming every setting that a HF Llama cannot represent."""
    problems = []
    if config.normalization != "RMSNorm":
        problems.append(f"normalization={config.normalization} (Llama uses RMSNorm)")
    if not (config.gated_linear_unit and config.activation_func is F.silu):
        problems.append("an activation other than swiglu (Llama uses swiglu)")
    if config.add_bias_linear:
        problems.append("add_bias_linear=true (Llama has no linear biases)")
    if gpt.position_embedding_type != "rope":
        problems.append(f"position_embedding_type={gpt.position_embedding_type} (Llama uses rope)")
    if problems:
        raise ValueError("this model cannot be exported as a Hugging Face Llama: " + "; ".join(problems))


def _head_layout(config: TransformerConfig) -> tuple[int, int, int]:
    """(query heads, query groups, head dim)."""
    heads = config.num_attention_heads
    return heads, config.num_query_groups or heads, config.kv_channels


def llama_config(
    config: TransformerConfig,
    gpt: GPTOptions,
    *,
    vocab_size: int,
    max_position_embeddings: int,
    dtype: str = "bfloat16",
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    rms_norm_eps: float = 1e-5,
) -> dict:
    """The ``config.json`` of the exported model (``LlamaForCausalLM``)."""
    check_llama_compatible(config, gpt)
    heads, groups, head_dim = _head_layout(config)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": groups,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": float(gpt.rotary_base),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": gpt.share_embeddings_and_output_weights,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,
    }


def _take(state: Mapping[str, torch.Tensor], *names: str) -> torch.Tensor:
    for name in names:
        if name in state:
            return state[name]
    raise KeyError(f"the megatron state dict has none of {names}; is it a full GPTModel state (TP=1, PP=1)?")


def convert_to_hf_llama(
    state: Mapping[str, torch.Tensor], config: TransformerConfig, gpt: GPTOptions, *, vocab_size: int
) -> dict[str, torch.Tensor]:
    """HF Llama tensors (names of ``LlamaForCausalLM.state_dict()``) from a megatron GPT state dict.

    Args:
        state: full megatron-core GPTModel state dict (TP=1, PP=1); ``_extra_state`` entries are ignored.
        config, gpt: the model's TransformerConfig and GPTModel arguments.
        vocab_size: the tokenizer's true vocabulary size; rows beyond it (megatron's padding) are dropped.
    """
    check_llama_compatible(config, gpt)
    heads, groups, head_dim = _head_layout(config)
    heads_per_group = heads // groups
    hidden = config.hidden_size
    out: dict[str, torch.Tensor] = {}

    embedding = _take(state, "embedding.word_embeddings.weight")
    if embedding.shape[0] < vocab_size:
        raise ValueError(f"vocab_size {vocab_size} exceeds the model's {embedding.shape[0]} embedding rows")
    out["model.embed_tokens.weight"] = embedding[:vocab_size]
    for i in range(config.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = _take(
            state, src + "input_layernorm.weight", src + "self_attention.linear_qkv.layer_norm_weight")
        qkv = _take(state, src + "self_attention.linear_qkv.weight")
        expected = (groups * (heads_per_group + 2) * head_dim, hidden)
        if tuple(qkv.shape) != expected:
            raise ValueError(f"{src}self_attention.linear_qkv.weight has shape {tuple(qkv.shape)}, expected "
                             f"{expected} for {heads} heads in {groups} groups of dim {head_dim}")
        per_group = qkv.view(groups, heads_per_group + 2, head_dim, hidden)
        out[dst + "self_attn.q_proj.weight"] = per_group[:, :heads_per_group].reshape(heads * head_dim, hidden)
        out[dst + "self_attn.k_proj.weight"] = per_group[:, heads_per_group].reshape(groups * head_dim, hidden)
        out[dst + "self_attn.v_proj.weight"] = per_group[:, heads_per_group + 1].reshape(groups * head_dim, hidden)
        out[dst + "self_attn.o_proj.weight"] = _take(state, src + "self_attention.linear_proj.weight")
        out[dst + "post_attention_layernorm.weight"] = _take(
            state, src + "pre_mlp_layernorm.weight", src + "mlp.linear_fc1.layer_norm_weight")
        gate, up = _take(state, src + "mlp.linear_fc1.weight").chunk(2, dim=0)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        out[dst + "mlp.down_proj.weight"] = _take(state, src + "mlp.linear_fc2.weight")
    out["model.norm.weight"] = _take(state, "decoder.final_layernorm.weight")
    if not gpt.share_embeddings_and_output_weights:
        out["lm_head.weight"] = _take(state, "output_layer.weight")[:vocab_size]
    return out


def save_hf_llama(
    out_dir: str,
    state: Mapping[str, torch.Tensor],
    config: TransformerConfig,
    gpt: GPTOptions,
    *,
    vocab_size: int,
    max_position_embeddings: int,
    dtype: str = "bfloat16",
    tokenizer_path: Optional[str] = None,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
) -> list[str]:
    """Write config.json, generation_config.json, safetensors weights (sharded above 5 GiB) and the tokenizer
    files to ``out_dir`` (`nemo_mft.hf.checkpoint_io.save_hf_dir`).

    ``out_dir`` must not exist or be empty: an export never overwrites files. Returns the written paths.
    """
    hf_config = llama_config(config, gpt, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                             dtype=dtype, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    tensors = convert_to_hf_llama(state, config, gpt, vocab_size=vocab_size)
    tokenizer_dir = None
    if tokenizer_path:
        tokenizer_dir = tokenizer_path if os.path.isdir(tokenizer_path) else os.path.dirname(tokenizer_path)
    return save_hf_dir(out_dir, tensors, hf_config, tokenizer_dir=tokenizer_dir, max_shard_size=_SHARD_BYTES,
                       dtype=dtype)
