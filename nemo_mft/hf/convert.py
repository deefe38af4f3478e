"""HF tensors <-> megatron-core local-spec GPT parameters, for every `Family`.

Layout (h = hidden size, d = head dim, nq query heads in ng groups of r = nq/ng, f = ffn size, V = the
checkpoint's vocabulary, Vp = megatron's padded vocabulary, T = tensor-parallel size, t = TP rank):

    q_proj [nq*d, h], k_proj / v_proj [ng*d, h] -> linear_qkv [ng*(r+2)*d, h], rows PER QUERY GROUP:
        for each group g: its r query heads, then its key head, then its value head (biases alike).
        TP rank t holds the groups [t*ng/T, (t+1)*ng/T), whole.
    o_proj [h, nq*d]              -> linear_proj, TP splits the input columns (head by head).
    gate_proj / up_proj [f, h]    -> linear_fc1 [2f, h] = [gate; up]; rank t holds [gate_t; up_t].
    down_proj [h, f]              -> linear_fc2, TP splits the input columns.
    embed_tokens / lm_head [V, h] -> word_embeddings / output_layer [Vp, h], rank t holds rows
        [t*Vp/T, (t+1)*Vp/T); rows >= V are padding, set to zero (the loss never predicts them).
    input_layernorm, post_attention_layernorm, q_norm, k_norm, norm -> replicated on every TP rank.
        (TransformerEngine's spec holds the first two as linear_qkv / linear_fc1 ``layer_norm_weight``.)

A pipeline stage holds the layers ``layer.layer_number - 1`` (megatron's global 1-based numbering), so
local layer j of stage s reads the HF layer of its global index. No rotary permutation is needed: megatron
(rotary_interleaved=False) and HF both rotate halves.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch

from nemo_mft.hf.checkpoint_io import SafetensorsReader
from nemo_mft.hf.config_map import HFModel

__all__ = ["load_hf_into", "load_hf_tensors_into", "megatron_to_hf", "split_qkv", "split_fc1"]

_LAYER_NAME = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
# TransformerEngine's spec fuses the pre-attention / pre-MLP norms into the next linear layer.
_TE_NAMES = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
             "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}
_LOCAL_NAMES = {te: local for local, te in _TE_NAMES.items()}
_REPLICATED = {
    "input_layernorm.weight": "input_norm",
    "pre_mlp_layernorm.weight": "post_norm",
    "self_attention.q_layernorm.weight": "q_norm",
    "self_attention.k_layernorm.weight": "k_norm",
}


def _span(total: int, tp_rank: int, tp_size: int) -> tuple[int, int]:
    if total % tp_size:
        raise ValueError(f"a dimension of {total} does not split into {tp_size} tensor-parallel parts")
    part = total // tp_size
    return tp_rank * part, (tp_rank + 1) * part


class _RankReader:
    """The tensors one TP rank owns, in megatron's local layout, read slice by slice from HF files."""

    def __init__(self, reader: SafetensorsReader, model: HFModel, tp_rank: int, tp_size: int):
        self.reader, self.model, self.tp_rank, self.tp_size = reader, model, tp_rank, tp_size

    def _hf(self, role: str, layer: int) -> str:
        return self.model.family.layer_tensor(role, layer)

    def qkv(self, layer: int, roles: tuple[str, str, str]) -> torch.Tensor:
        m = self.model
        d, r = m.head_dim, m.heads_per_group
        g0, g1 = _span(m.num_query_groups, self.tp_rank, self.tp_size)
        groups = g1 - g0
        q = self.reader.read(self._hf(roles[0], layer), rows=(g0 * r * d, g1 * r * d))
        k = self.reader.read(self._hf(roles[1], layer), rows=(g0 * d, g1 * d))
        v = self.reader.read(self._hf(roles[2], layer), rows=(g0 * d, g1 * d))
        tail = q.shape[1:]
        fused = torch.cat([q.reshape(groups, r * d, *tail), k.reshape(groups, d, *tail),
                           v.reshape(groups, d, *tail)], dim=1)
        return fused.reshape(groups * (r + 2) * d, *tail)

    def fc1(self, layer: int) -> torch.Tensor:
        rows = _span(self.model.ffn_hidden_size, self.tp_rank, self.tp_size)
        return torch.cat([self.reader.read(self._hf("gate", layer), rows=rows),
                          self.reader.read(self._hf("up", layer), rows=rows)], dim=0)

    def columns(self, role: str, layer: int, total: int) -> torch.Tensor:
        return self.reader.read(self._hf(role, layer), cols=_span(total, self.tp_rank, self.tp_size))

    def vocab_rows(self, name: str, padded: int) -> torch.Tensor:
        """Rows [t*Vp/T, (t+1)*Vp/T) of a [V, h] tensor; rows >= V are zeros."""
        start, stop = _span(padded, self.tp_rank, self.tp_size)
        vocab, hidden = self.reader.shape(name)
        if vocab > padded:
            raise ValueError(f"{name} has {vocab} rows, more than the model's {padded} vocabulary columns")
        out = None
        if start < vocab:
            part = self.reader.read(name, rows=(start, min(stop, vocab)))
            out = torch.zeros(stop - start, hidden, dtype=part.dtype)
            out[: part.shape[0]] = part
        return out if out is not None else torch.zeros(stop - start, hidden)

    def layer_param(self, sub: str, layer: int) -> torch.Tensor:
        m = self.model
        sub = _LOCAL_NAMES.get(sub, sub)
        if sub in _REPLICATED:
            return self.reader.read(self._hf(_REPLICATED[sub], layer))
        if sub == "self_attention.linear_qkv.weight":
            return self.qkv(layer, ("q", "k", "v"))
        if sub == "self_attention.linear_qkv.bias":
            return self.qkv(layer, ("q_bias", "k_bias", "v_bias"))
        if sub == "self_attention.linear_proj.weight":
            return self.columns("o", layer, m.num_attention_heads * m.head_dim)
        if sub == "mlp.linear_fc1.weight":
            return self.fc1(layer)
        if sub == "mlp.linear_fc2.weight":
            return self.columns("down", layer, m.ffn_hidden_size)
        raise KeyError(f"no HF tensor maps to the megatron layer parameter {sub!r}")

    def param(self, name: str, layer_numbers: list[int], padded_vocab: int) -> torch.Tensor:
        names = self.model.family.global_names
        match = _LAYER_NAME.fullmatch(name)
        if match:
            return self.layer_param(match[2], layer_numbers[int(match[1])] - 1)
        if name == "embedding.word_embeddings.weight":
            return self.vocab_rows(names["embed"], padded_vocab)
        if name == "output_layer.weight":  # the last stage's copy of tied embeddings reads the embedding
            return self.vocab_rows(names["embed"] if self.model.tied else names["lm_head"], padded_vocab)
        if name == "decoder.final_layernorm.weight":
            return self.reader.read(names["final_norm"])
        raise KeyError(f"no HF tensor maps to the megatron parameter {name!r}")


def load_hf_tensors_into(gpt: torch.nn.Module, reader: SafetensorsReader, model: HFModel, *, tp_rank: int,
                         tp_size: int, padded_vocab_size: int) -> list[str]:
    """Copy this rank's slices of the HF tensors in ``reader`` into the GPTModel ``gpt``; the loaded names.

    ``gpt`` is this rank's pipeline stage and TP shard of a megatron-core GPTModel built from
    `config_map.transformer_config` / `layer_spec` / `gpt_options` of ``model``. Every parameter is
    written (ValueError on a shape mismatch); values are cast to each parameter's dtype.
    """
    layer_numbers = [layer.layer_number for layer in gpt.decoder.layers]
    rank_reader = _RankReader(reader, model, tp_rank, tp_size)
    loaded = []
    with torch.no_grad():
        for name, param in gpt.named_parameters():
            value = rank_reader.param(name, layer_numbers, padded_vocab_size)
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: the checkpoint gives shape {tuple(value.shape)} on TP rank {tp_rank}, "
                                 f"the model has {tuple(param.shape)}; does config.json match the weights?")
            param.copy_(value.to(param.dtype))
            loaded.append(name)
    return loaded


def load_hf_into(gpt: torch.nn.Module, hf_dir: str, model: HFModel, groups, *,
                 padded_vocab_size: Optional[int] = None) -> dict[str, int]:
    """Streaming import of the HF checkpoint ``hf_dir`` into this rank's GPTModel stage ``gpt``.

    Each rank reads only the tensors of its pipeline stage and, of those, only its TP slices (``groups.tp``
    gives the rank and size). ``padded_vocab_size`` defaults to the GPTModel's ``vocab_size`` (all TP ranks
    together). Returns the bytes read per HF tensor. For MFT, load into the student and then
    copy it into the teacher (`nemo_mft.megatron.sync_teacher_from_student`).
    """
    with SafetensorsReader(hf_dir) as reader:
        load_hf_tensors_into(gpt, reader, model, tp_rank=groups.tp.rank(), tp_size=groups.tp.size(),
                             padded_vocab_size=padded_vocab_size or gpt.vocab_size)
        return dict(reader.bytes_read)


def _take(state: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name in state:
        return state[name]
    prefix, _, tail = name.rpartition("decoder.layers.")
    layer, _, sub = tail.partition(".")
    if sub in _TE_NAMES and f"{prefix}decoder.layers.{layer}.{_TE_NAMES[sub]}" in state:
        return state[f"{prefix}decoder.layers.{layer}.{_TE_NAMES[sub]}"]
    raise KeyError(f"the megatron state dict has no {name!r}; is it a full GPTModel state (TP=1, PP=1)?")


def split_qkv(fused: torch.Tensor, model: HFModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, k, v)`` rows of a full (TP=1) fused ``linear_qkv`` tensor [ng*(r+2)*d, ...] (a weight, a bias, or
    LoRA's B): per query group g its r query heads, then its key head, then its value head (module docstring)."""
    d, r, ng = model.head_dim, model.heads_per_group, model.num_query_groups
    tail = fused.shape[1:]
    per_group = fused.reshape(ng, r + 2, d, *tail)
    return (per_group[:, :r].reshape(ng * r * d, *tail), per_group[:, r].reshape(ng * d, *tail),
            per_group[:, r + 1].reshape(ng * d, *tail))


def split_fc1(fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate, up)`` rows of a full (TP=1) ``linear_fc1`` tensor [2f, ...] = [gate; up] (a weight or LoRA's B)."""
    gate, up = fused.chunk(2, dim=0)
    return gate, up


def megatron_to_hf(state: Mapping[str, torch.Tensor], model: HFModel) -> dict[str, torch.Tensor]:
    """HF tensors of ``model.family`` from a full (TP=1, PP=1) megatron GPTModel state dict.

    The inverse of the import: the fused tensors are split back, vocabulary padding rows (>= vocab_size)
    are cut, and a tied model gets no ``lm_head.weight``. ``_extra_state`` entries are ignored. The norms
    are also found under TransformerEngine's fused names (``linear_qkv.layer_norm_weight``, ...).
    """
    family, d, r = model.family, model.head_dim, model.heads_per_group
    ng, h, vocab = model.num_query_groups, model.hidden_size, model.vocab_size
    out: dict[str, torch.Tensor] = {}
    names = family.global_names
    out[names["embed"]] = _take(state, "embedding.word_embeddings.weight")[:vocab]
    for i in range(model.num_layers):
        src = f"decoder.layers.{i}."

        def put(role: str, tensor: torch.Tensor) -> None:
            out[family.layer_tensor(role, i)] = tensor

        for sub, role in _REPLICATED.items():
            if role in family.layer_names:
                put(role, _take(state, src + sub))
        qkv = _take(state, src + "self_attention.linear_qkv.weight")
        expected = (ng * (r + 2) * d, h)
        if tuple(qkv.shape) != expected:
            raise ValueError(f"{src}self_attention.linear_qkv.weight has shape {tuple(qkv.shape)}, expected "
                             f"{expected}: is the state dict TP=1 and of this model?")
        for suffix, roles in ((".weight", ("q", "k", "v")), (".bias", ("q_bias", "k_bias", "v_bias"))):
            if suffix == ".bias" and not model.qkv_bias:
                continue
            for role, part in zip(roles, split_qkv(_take(state, src + "self_attention.linear_qkv" + suffix), model)):
                put(role, part)
        put("o", _take(state, src + "self_attention.linear_proj.weight"))
        gate, up = split_fc1(_take(state, src + "mlp.linear_fc1.weight"))
        put("gate", gate)
        put("up", up)
        put("down", _take(state, src + "mlp.linear_fc2.weight"))
    out[names["final_norm"]] = _take(state, "decoder.final_layernorm.weight")
    if not model.tied:
        out[names["lm_head"]] = _take(state, "output_layer.weight")[:vocab]
    return out
