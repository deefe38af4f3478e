"""The Hugging Face model families that convert to and from megatron-core's local GPT spec.

One `Family` entry per architecture: which optional tensors its layers hold (q/k/v biases, per-head q/k
RMSNorm), which ``config.json`` switches it may carry, and the HF tensor names. Every supported family is a
dense decoder with RMSNorm, SwiGLU and rotary embeddings, so the names differ only in the optional tensors;
a new family with the same layer anatomy is one more entry in `FAMILIES`, not a new converter.

Tensor roles (keys of `Family.layer_names` / `Family.global_names`):

    per layer i: input_norm, q, k, v, (q_bias, k_bias, v_bias), (q_norm, k_norm), o, post_norm, gate, up, down
    global:      embed, final_norm, lm_head (absent when the embeddings are tied)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["Family", "FAMILIES", "family_for", "supported_architectures"]

# The Llama layer anatomy every family shares; `{i}` is the global layer index.
_LAYER = {
    "input_norm": "model.layers.{i}.input_layernorm.weight",
    "q": "model.layers.{i}.self_attn.q_proj.weight",
    "k": "model.layers.{i}.self_attn.k_proj.weight",
    "v": "model.layers.{i}.self_attn.v_proj.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "post_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
}
_QKV_BIAS = {
    "q_bias": "model.layers.{i}.self_attn.q_proj.bias",
    "k_bias": "model.layers.{i}.self_attn.k_proj.bias",
    "v_bias": "model.layers.{i}.self_attn.v_proj.bias",
}
_QK_NORM = {
    "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
}
_GLOBAL = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}


@dataclass(frozen=True)
class Family:
    """One HF architecture and how its checkpoint maps onto megatron-core's local GPT layers.

    Attributes:
        architecture: the ``architectures[0]`` of ``config.json`` (e.g. "LlamaForCausalLM").
        model_type: the ``model_type`` of ``config.json``, written back on export.
        qkv_bias: the q/k/v projections always carry biases (Qwen2); o_proj and the MLP never do.
        qk_norm: per-head RMSNorm on queries and keys before rotary (Qwen3), weights of size head_dim.
        sliding_window_key: the config field that switches sliding-window attention on, "" when the
            window alone decides (Mistral: ``sliding_window`` not null), None when the family has none.
        false_flags: config fields that must be false or absent (biases the family cannot carry here).
    """

    architecture: str
    model_type: str
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window_key: str | None = None
    false_flags: tuple[str, ...] = ()
    layer_names: Mapping[str, str] = field(init=False, repr=False)
    global_names: Mapping[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.architecture.endswith("ForCausalLM") or not self.model_type:
            raise ValueError(f"a family needs a *ForCausalLM architecture and a model_type, got {self!r}")
        names = dict(_LAYER)
        if self.qkv_bias:
            names.update(_QKV_BIAS)
        if self.qk_norm:
            names.update(_QK_NORM)
        object.__setattr__(self, "layer_names", names)
        object.__setattr__(self, "global_names", dict(_GLOBAL))

    def layer_tensor(self, role: str, layer: int) -> str:
        """HF name of ``role`` (a key of `layer_names`) in global layer ``layer`` (0-based)."""
        return self.layer_names[role].format(i=layer)


FAMILIES: dict[str, Family] = {f.architecture: f for f in (
    Family("LlamaForCausalLM", "llama", false_flags=("attention_bias", "mlp_bias")),
    Family("MistralForCausalLM", "mistral", sliding_window_key=""),
    Family("Qwen2ForCausalLM", "qwen2", qkv_bias=True, sliding_window_key="use_sliding_window"),
    Family("Qwen3ForCausalLM", "qwen3", qk_norm=True, sliding_window_key="use_sliding_window",
           false_flags=("attention_bias",)),
)}


def supported_architectures() -> str:
    """The supported ``architectures`` names, comma-separated (for error messages)."""
    return ", ".join(sorted(FAMILIES))


def family_for(hf_config: Mapping) -> Family:
    """The `Family` of a parsed ``config.json``; ValueError naming the supported ones otherwise."""
    archs = hf_config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in FAMILIES:
        raise ValueError(f"unsupported Hugging Face architecture {archs or '(none given)'}: supported are "
                         f"{supported_architectures()} (dense decoders only)")
    return FAMILIES[archs[0]]
