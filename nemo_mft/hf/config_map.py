"""A Hugging Face ``config.json`` -> the megatron-core objects that build the same model.

`describe` reads the fields (transformers 5 keeps rope settings in ``rope_parameters``; older files use
``rope_theta`` / ``rope_scaling``: both are read) into a frozen `HFModel`, refusing what megatron-core's
local GPT spec cannot reproduce exactly. `transformer_config`, `layer_spec` and `gpt_options` turn an
`HFModel` into the ``TransformerConfig``, layer spec and `GPTOptions` that `nemo_mft.megatron.build_model`
takes.

Rope scaling: megatron-core 0.16's GPTModel implements Llama 3.1's "llama3" scaling only with
low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 8192 (its fixed defaults, with a
free ``factor``); any other llama3 parameters, and every other rope type, are refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from nemo_mft.hf.families import Family, family_for
from nemo_mft.megatron.model import GPTOptions, padded_vocab_size, transformer_config_settings

__all__ = ["HFModel", "read_config", "describe", "transformer_config", "layer_spec", "gpt_options",
           "MEGATRON_LLAMA3_ROPE"]

# The llama3 rope parameters megatron-core 0.16's RotaryEmbedding._apply_scaling hard-codes.
MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok")


@dataclass(frozen=True)
class HFModel:
    """What the converter needs to know of a HF checkpoint's model (sizes in elements, not bytes).

    Attributes:
        family: the architecture's `Family`.
        num_layers, hidden_size, ffn_hidden_size: decoder layers, model width, MLP width (per gate/up half).
        num_attention_heads, num_query_groups: query heads and key/value heads (GQA groups).
        head_dim: channels per head (may differ from hidden_size / num_attention_heads, e.g. Qwen3).
        vocab_size: the checkpoint's vocabulary rows (``config.json``'s ``vocab_size``).
        rope_theta: RoPE base.
        rope_scaling_factor: Llama 3.1 "llama3" scaling factor with megatron's fixed parameters, or None.
        tied: the output layer reuses the input embedding (no ``lm_head.weight``).
        norm_eps: RMSNorm epsilon.
        max_position_embeddings: the config's context length (written back on export only).
    """

    family: Family
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rope_scaling_factor: Optional[float]
    tied: bool
    norm_eps: float
    max_position_embeddings: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                     "head_dim", "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_query_groups}")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise ValueError(f"rope_theta and rms_norm_eps must be > 0, got {self.rope_theta}, {self.norm_eps}")
        if self.rope_scaling_factor is not None and not self.rope_scaling_factor > 0:
            raise ValueError(f"rope scaling factor must be > 0, got {self.rope_scaling_factor}")

    @property
    def qkv_bias(self) -> bool:
        return self.family.qkv_bias

    @property
    def qk_norm(self) -> bool:
        return self.family.qk_norm

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups


def read_config(hf_dir: str) -> dict:
    """The parsed ``config.json`` of a HF checkpoint directory."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{hf_dir} has no config.json: not a Hugging Face checkpoint directory")
    with open(path) as handle:
        return json.load(handle)


def _rope(cfg: Mapping[str, Any]) -> tuple[float, Optional[float]]:
    """(theta, llama3 factor or None) from ``rope_parameters`` (transformers 5) or rope_theta/rope_scaling."""
    params = cfg.get("rope_parameters")
    if params is None:
        params = dict(cfg.get("rope_scaling") or {})
        theta = cfg.get("rope_theta", 10000.0)
    else:
        if params and all(isinstance(v, Mapping) for v in params.values()):
            raise ValueError("per-layer-type rope_parameters are not supported (one rope for all layers only)")
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if cfg.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported (megatron's rotary_percent is not mapped)")
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"rope type {kind!r} is not supported: only 'default' and Llama 3.1's 'llama3'")
    wrong = {k: params.get(k) for k, v in MEGATRON_LLAMA3_ROPE.items() if params.get(k) != v}
    if wrong or "factor" not in params:
        raise ValueError(f"llama3 rope scaling with {wrong or 'no factor'} is not supported: megatron-core "
                         f"0.16's GPTModel fixes {MEGATRON_LLAMA3_ROPE} (only 'factor' is free)")
    return float(theta), float(params["factor"])


def _check_supported(cfg: Mapping[str, Any], family: Family, seq_length: int) -> None:
    """ValueError for MoE, quantized weights, biases the family cannot carry, a short sliding window,
    non-SwiGLU MLPs."""
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?") if isinstance(
            cfg["quantization_config"], Mapping) else "?"
        raise ValueError(f"quantized checkpoints ({method}) are not supported: convert from bf16/fp16/fp32 weights")
    moe = {k: cfg[k] for k in _MOE_KEYS if cfg.get(k)}
    if moe:
        raise ValueError(f"mixture-of-experts models are not supported ({moe}); dense decoders only")
    flags = [k for k in family.false_flags if cfg.get(k)]
    if flags:
        raise ValueError(f"{family.architecture} with {', '.join(f'{k}=true' for k in flags)} is not supported "
                         f"(megatron's local spec maps only q/k/v biases, and only for Qwen2)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={cfg.get('hidden_act')!r} is not supported (SwiGLU with silu only)")
    window = cfg.get("sliding_window")
    if family.sliding_window_key is None:
        active = False
    elif family.sliding_window_key == "":
        active = window is not None
    else:
        active = bool(cfg.get(family.sliding_window_key))
    if active and (window is None or window < seq_length):
        raise ValueError(f"{family.architecture} uses sliding-window attention (sliding_window={window}) shorter "
                         f"than the sequence length {seq_length}: megatron's local spec attends to the whole "
                         f"sequence, so only windows >= the sequence length convert")
    unknown = set(cfg.get("layer_types") or ()) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(f"layer_types {sorted(unknown)} are not supported")


def describe(hf_config: Mapping[str, Any], *, seq_length: int) -> HFModel:
    """The `HFModel` of a parsed ``config.json`` for training on sequences of ``seq_length`` tokens.

    Raises ValueError (listing the supported architectures where the architecture is the problem) for
    anything the converter cannot reproduce exactly.
    """
    family = family_for(hf_config)
    _check_supported(hf_config, family, seq_length)
    theta, factor = _rope(hf_config)
    heads = hf_config["num_attention_heads"]
    hidden = hf_config["hidden_size"]
    head_dim = hf_config.get("head_dim") or hidden // heads
    return HFModel(
        family=family,
        num_layers=hf_config["num_hidden_layers"],
        hidden_size=hidden,
        ffn_hidden_size=hf_config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=hf_config.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        vocab_size=hf_config["vocab_size"],
        rope_theta=theta,
        rope_scaling_factor=factor,
        tied=bool(hf_config.get("tie_word_embeddings", False)),
        norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=hf_config.get("max_position_embeddings", seq_length),
    )


def transformer_config(model: HFModel, *, tp_size: int = 1, pp_size: int = 1,
                       params_dtype: torch.dtype = torch.float32) -> TransformerConfig:
    """megatron-core TransformerConfig of ``model`` (local spec, no fusions, per-token loss)."""
    if model.num_query_groups % tp_size:
        raise ValueError(f"num_key_value_heads {model.num_query_groups} is not divisible by the tensor-parallel "
                         f"size {tp_size}: TP splits attention by whole query groups")
    if model.num_layers % pp_size:
        raise ValueError(f"num_hidden_layers {model.num_layers} is not divisible by the pipeline size {pp_size}")
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        activation_func=F.silu,
        gated_linear_unit=True,
        add_bias_linear=False,
        add_qkv_bias=model.qkv_bias,
        qk_layernorm=model.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        pipeline_dtype=params_dtype,
        tensor_model_parallel_size=tp_size,
        pipeline_model_parallel_size=pp_size,
        perform_initialization=False,  # every weight is loaded from the checkpoint
        **transformer_config_settings(),
    )


def layer_spec(model: HFModel) -> ModuleSpec:
    """megatron-core's local GPT layer spec (RMSNorm, q/k RMSNorm where the family has it): what conversions
    (`nemo-mft import` / `export`) build; a training run picks its spec with ``model.transformer_impl``."""
    return get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=model.qk_norm)


def gpt_options(model: HFModel, *, tp_size: int, seq_length: int, make_vocab_size_divisible_by: int = 128
                ) -> GPTOptions:
    """GPTModel arguments: vocabulary padded for ``tp_size``, rope base and scaling, tied embeddings."""
    if model.rope_theta != math.floor(model.rope_theta):
        raise ValueError(f"rope_theta {model.rope_theta} is not an integer (GPTOptions.rotary_base is)")
    return GPTOptions(
        padded_vocab_size=padded_vocab_size(model.vocab_size, make_vocab_size_divisible_by, tp_size),
        max_sequence_length=seq_length,
        position_embedding_type="rope",
        rotary_base=int(model.rope_theta),
        rope_scaling_factor=model.rope_scaling_factor,
        share_embeddings_and_output_weights=model.tied,
    )
