"""The Hugging Face Llama ``config.json`` of a megatron-core GPT trained from scratch.

A model trained from a Hugging Face base model is exported with its base model's own config.json (it travels
in every checkpoint's ``hf/``). A model trained from scratch has none: `llama_config` writes one for a
Llama-shaped model (RMSNorm, SwiGLU, rotary embeddings, no linear or q/k/v biases, no q/k norms), described
by its ``TransformerConfig`` and `nemo_mft.megatron.GPTOptions`, and `check_llama_compatible` names every
setting that a ``LlamaForCausalLM`` cannot represent. The tensors themselves are converted by
`nemo_mft.hf.megatron_to_hf` and written by `nemo_mft.hf.save_hf_dir`, as for every other architecture
(``nemo-mft export``, `nemo_mft.finetune.export_command`).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from nemo_mft.hf.config_map import MEGATRON_LLAMA3_ROPE
from nemo_mft.megatron.model import GPTOptions

__all__ = ["check_llama_compatible", "llama_config"]


def check_llama_compatible(config: TransformerConfig, gpt: GPTOptions) -> None:
    """ValueError naming every setting that a HF Llama cannot represent."""
    problems = []
    if config.normalization != "RMSNorm":
        problems.append(f"normalization={config.normalization} (Llama uses RMSNorm)")
    if not (config.gated_linear_unit and config.activation_func is F.silu):
        problems.append("an activation other than swiglu (Llama uses swiglu)")
    if config.add_bias_linear:
        problems.append("add_bias_linear=true (Llama has no linear biases)")
    if config.add_qkv_bias:
        problems.append("add_qkv_bias=true (Llama has no q/k/v biases)")
    if config.qk_layernorm:
        problems.append("qk_layernorm=true (Llama has no q/k norms)")
    if gpt.position_embedding_type != "rope":
        problems.append(f"position_embedding_type={gpt.position_embedding_type} (Llama uses rope)")
    if problems:
        raise ValueError("this model cannot be exported as a Hugging Face Llama: " + "; ".join(problems))


def llama_config(
    config: TransformerConfig,
    gpt: GPTOptions,
    *,
    vocab_size: int,
    max_position_embeddings: int,
    dtype: str = "bfloat16",
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
) -> dict:
    """The ``config.json`` (``LlamaForCausalLM``) of the model; ``vocab_size``: its embedding rows without the
    TP padding. RMSNorm epsilon, head dim, GQA groups, rope base and Llama 3.1 rope scaling (megatron's fixed
    parameters, `MEGATRON_LLAMA3_ROPE`) come from ``config`` and ``gpt``."""
    check_llama_compatible(config, gpt)
    heads = config.num_attention_heads
    rope_scaling = None
    if gpt.rope_scaling_factor is not None:
        rope_scaling = {"rope_type": "llama3", "factor": float(gpt.rope_scaling_factor), **MEGATRON_LLAMA3_ROPE}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": config.num_query_groups or heads,
        "head_dim": config.kv_channels,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": config.layernorm_epsilon,
        "rope_theta": float(gpt.rotary_base),
        "rope_scaling": rope_scaling,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": gpt.share_embeddings_and_output_weights,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,
    }
