"""LoRA adapters of a full megatron model -> Hugging Face PEFT's adapter directory (what NIM, vLLM and peft load).

Megatron's LoRA (`nemo_mft.peft`) adapts the fused layers; PEFT adapts HF's separate projections. With the
adapters of a full (TP=1, PP=1) `AdapterSet` state (``decoder.layers.<i>.<module>.lora_a`` [r, in] /
``.lora_b`` [out, r]) and the notation of `nemo_mft.hf.convert` (d head dim, ng query groups of r heads, f ffn):

    linear_qkv  (A [r, h], B [ng*(r+2)*d, r]) -> q_proj, k_proj, v_proj: each gets the same A; B's rows are
        split per query group exactly like the weight (`convert.split_qkv`): B_q [nq*d, r], B_k / B_v [ng*d, r].
    linear_fc1  (A [r, h], B [2f, r] = [B_gate; B_up]) -> gate_proj, up_proj: the same A, B split in halves.
    linear_proj -> o_proj, linear_fc2 -> down_proj: A and B as they are.

This is exact: the fused delta ``B A x`` split by rows is ``(B_q A x; B_k A x; B_v A x)``. PEFT's scale
``lora_alpha / r`` (``use_rslora`` false) is ours, and both apply the dropout to the layer's input. Tensor
names are PEFT's, ``base_model.model.<HF module path>.lora_A.weight`` / ``.lora_B.weight``, the module path
being the HF weight name without ``.weight`` (`Family.layer_tensor`), so every family maps the same way.

`merge_lora` folds the adapters into the base weights in megatron space (``W + alpha/r * B A``), before
`convert.megatron_to_hf`: the merged model is a plain HF checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import torch

from nemo_mft.hf.config_map import HFModel
from nemo_mft.hf.convert import split_fc1, split_qkv
from nemo_mft.peft import TARGET_PATHS, LoRAConfig

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "hf_target_modules", "lora_to_peft", "adapter_config",
           "merge_lora", "save_peft_dir"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
# The HF projections (`Family` roles) each megatron target adapts, in HF's module order.
_ROLES = {"linear_qkv": ("q", "k", "v"), "linear_proj": ("o",), "linear_fc1": ("gate", "up"), "linear_fc2": ("down",)}
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _module_path(model: HFModel, role: str, layer: int) -> str:
    return model.family.layer_tensor(role, layer).removesuffix(".weight")


def hf_target_modules(model: HFModel, config: LoRAConfig) -> list[str]:
    """PEFT's ``target_modules`` for ``config.target_modules``: the HF projection names (q_proj, ..., down_proj)."""
    return [_module_path(model, role, 0).rsplit(".", 1)[1]
            for target in (t for t in _ROLES if t in config.target_modules) for role in _ROLES[target]]


def _shapes(model: HFModel, target: str) -> tuple[int, int]:
    """(in, out) of the full megatron layer ``target``."""
    m = model
    qkv_rows = m.num_query_groups * (m.heads_per_group + 2) * m.head_dim
    return {"linear_qkv": (m.hidden_size, qkv_rows),
            "linear_proj": (m.num_attention_heads * m.head_dim, m.hidden_size),
            "linear_fc1": (m.hidden_size, 2 * m.ffn_hidden_size),
            "linear_fc2": (m.ffn_hidden_size, m.hidden_size)}[target]


def _pairs(adapters: Mapping[str, torch.Tensor], model: HFModel, config: LoRAConfig
           ) -> list[tuple[int, str, torch.Tensor, torch.Tensor]]:
    """``(layer, target, A, B)`` for every layer and target; ValueError unless ``adapters`` holds exactly
    these tensors in the full (TP=1) shapes."""
    expected, out = set(), []
    r = config.dim
    for layer in range(model.num_layers):
        for target in config.target_modules:
            key = f"decoder.layers.{layer}.{TARGET_PATHS[target]}"
            expected |= {f"{key}.lora_a", f"{key}.lora_b"}
            missing = [k for k in (f"{key}.lora_a", f"{key}.lora_b") if k not in adapters]
            if missing:
                raise ValueError(f"the adapter state has no {missing[0]} (it must hold every layer's "
                                 f"{', '.join(config.target_modules)} adapters, TP=1, PP=1)")
            a, b = adapters[f"{key}.lora_a"], adapters[f"{key}.lora_b"]
            fan_in, fan_out = _shapes(model, target)
            if tuple(a.shape) != (r, fan_in) or tuple(b.shape) != (fan_out, r):
                raise ValueError(f"{key}: A {tuple(a.shape)} and B {tuple(b.shape)}, expected A {(r, fan_in)} and "
                                 f"B {(fan_out, r)}: is the adapter state TP=1, of this model and of rank {r}?")
            out.append((layer, target, a, b))
    unexpected = sorted(set(adapters) - expected)
    if unexpected:
        raise ValueError(f"the adapter state has {len(unexpected)} tensors outside the LoRA settings "
                         f"(target_modules {list(config.target_modules)}, {model.num_layers} layers), e.g. "
                         f"{unexpected[0]}")
    return out


def lora_to_peft(adapters: Mapping[str, torch.Tensor], model: HFModel, config: LoRAConfig) -> dict[str, torch.Tensor]:
    """PEFT's tensors (``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``) of a full (TP=1, PP=1)
    megatron adapter state; see the module docstring. Every returned tensor has its own storage (safetensors
    refuses shared ones)."""
    out: dict[str, torch.Tensor] = {}
    for layer, target, a, b in _pairs(adapters, model, config):
        if target == "linear_qkv":
            parts = split_qkv(b, model)
        elif target == "linear_fc1":
            parts = split_fc1(b)
        else:
            parts = (b,)
        for role, part in zip(_ROLES[target], parts):
            name = _PREFIX + _module_path(model, role, layer)
            out[f"{name}.lora_A.weight"] = a.detach().clone()
            out[f"{name}.lora_B.weight"] = part.detach().clone()
    return out


def adapter_config(model: HFModel, config: LoRAConfig, *, base_model_name_or_path: Optional[str]) -> dict:
    """PEFT's ``adapter_config.json`` (a LoRA ``LoraConfig`` of peft 0.21, CAUSAL_LM) for these adapters."""
    alpha = int(config.alpha) if float(config.alpha).is_integer() else float(config.alpha)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "revision": None, "inference_mode": True, "r": config.dim, "lora_alpha": alpha,
        "lora_dropout": config.dropout, "target_modules": hf_target_modules(model, config), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {},
    }


def merge_lora(state: Mapping[str, torch.Tensor], adapters: Mapping[str, torch.Tensor], model: HFModel,
               config: LoRAConfig) -> dict[str, torch.Tensor]:
    """A copy of the full (TP=1, PP=1) megatron state ``state`` with every adapted weight replaced by
    ``W + alpha/r * B A`` (computed in fp32, stored in W's dtype); ready for `convert.megatron_to_hf`."""
    merged = dict(state)
    for layer, target, a, b in _pairs(adapters, model, config):
        name = f"decoder.layers.{layer}.{TARGET_PATHS[target]}.weight"
        weight = state[name]
        merged[name] = (weight.float() + config.scale * (b.float() @ a.float())).to(weight.dtype)
    return merged


def save_peft_dir(out_dir: str, tensors: Mapping[str, torch.Tensor], config: Mapping, *,
                  dtype: Optional[str] = None) -> list[str]:
    """Write exactly `ADAPTER_CONFIG` and `ADAPTER_WEIGHTS` into ``out_dir`` (new or empty; FileExistsError
    otherwise); ``dtype`` ("bfloat16", "float16", "float32", None: as they are) casts the tensors. Returns
    the written paths."""
    from safetensors.torch import save_file

    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"export directory {out_dir} exists and is not empty; choose a new directory")
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, ADAPTER_WEIGHTS)
    save_file({n: t.detach().to("cpu", _DTYPES[dtype] if dtype else t.dtype).contiguous() for n, t in tensors.items()},
              weights, metadata={"format": "pt"})
    config_path = os.path.join(out_dir, ADAPTER_CONFIG)
    with open(config_path, "w") as handle:
        json.dump(dict(config), handle, indent=2)
    return [config_path, weights]
