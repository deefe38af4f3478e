"""Reading and writing Hugging Face safetensors checkpoint directories, one slice at a time.

`SafetensorsReader` opens a single ``model.safetensors`` or the shards named by
``model.safetensors.index.json`` and hands out row or column ranges of one tensor (safetensors'
``get_slice``), so a tensor-parallel rank materializes only its own slice; it counts the bytes it
returned per tensor (`bytes_read`), which the tests use to check that claim. `save_hf_dir` writes a
complete directory: config.json, generation_config.json, tokenizer files and (sharded) safetensors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import defaultdict
from typing import Mapping, Optional, Union

import torch

__all__ = ["SafetensorsReader", "save_hf_dir", "parse_size", "TOKENIZER_FILES"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_FLOAT_CODES = ("BF16", "F16", "F32")  # safetensors' dtype codes of the float formats read here
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class SafetensorsReader:
    """Slices of the tensors of one HF checkpoint directory (single file or index + shards).

    Use as a context manager; files stay open (memory-mapped) until exit. ``bytes_read[name]`` is the total
    size, in bytes, of the slices of ``name`` returned so far.
    """

    def __init__(self, hf_dir: str):
        index_path, single_path = os.path.join(hf_dir, INDEX), os.path.join(hf_dir, SINGLE)
        if os.path.isfile(index_path):
            with open(index_path) as handle:
                self._file_of = {k: os.path.join(hf_dir, v) for k, v in json.load(handle)["weight_map"].items()}
        elif os.path.isfile(single_path):
            from safetensors import safe_open

            with safe_open(single_path, framework="pt") as handle:
                self._file_of = {k: single_path for k in handle.keys()}
        else:
            raise FileNotFoundError(f"{hf_dir} has neither {SINGLE} nor {INDEX}")
        self._handles: dict[str, object] = {}
        self.bytes_read: dict[str, int] = defaultdict(int)

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()

    def names(self) -> list[str]:
        return sorted(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def _slice(self, name: str):
        if name not in self._file_of:
            raise KeyError(f"the checkpoint has no tensor {name!r}")
        path = self._file_of[name]
        if path not in self._handles:
            from safetensors import safe_open

            handle = safe_open(path, framework="pt")
            self._handles[path] = handle.__enter__()
        return self._handles[path].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, rows: Optional[tuple[int, int]] = None,
             cols: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Tensor ``name`` restricted to rows [start, stop) (dim 0) and/or columns [start, stop) (dim 1).

        Stored dtype kept (bf16, fp16 or fp32; ValueError for any other, e.g. fp8 or int8 weights).
        """
        part = self._slice(name)
        rank = len(part.get_shape())
        if cols is not None and rank != 2:
            raise ValueError(f"column slice of {name!r}, a {rank}-D tensor")
        if part.get_dtype() not in _FLOAT_CODES:
            raise ValueError(f"{name} is stored as {part.get_dtype()}: only BF16, F16 and F32 checkpoints convert "
                             f"(quantized weights need their scales, which this reader does not apply)")
        r = slice(*rows) if rows is not None else slice(None)
        tensor = part[r, slice(*cols)] if cols is not None else part[r]
        self.bytes_read[name] += tensor.numel() * tensor.element_size()
        return tensor


def parse_size(size: Union[int, str]) -> int:
    """Bytes in ``size``: an int, or "5GB" / "500MB" (decimal) / "2GiB" (binary), as HF writes them."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"max_shard_size {size!r} is not a size such as '5GB' or '500MB'")
        value = int(float(match[1]) * _UNITS[(match[2] or "").upper()])
    if value < 1:
        raise ValueError(f"max_shard_size must be >= 1 byte, got {size!r}")
    return value


def _shards(tensors: Mapping[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    return shards + [current] if current else shards


def _generation_config(hf_config: Mapping) -> dict:
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {"_from_model_config": True, **{k: hf_config[k] for k in keys if hf_config.get(k) is not None}}


def save_hf_dir(out_dir: str, tensors: Mapping[str, torch.Tensor], hf_config: Mapping, *,
                tokenizer_dir: Optional[str] = None, max_shard_size: Union[int, str] = "5GB",
                dtype: Optional[str] = None) -> list[str]:
    """Write a loadable HF checkpoint directory; the written paths.

    Args:
        out_dir: must not exist or be empty (an export never overwrites files).
        tensors: HF tensor names -> tensors (e.g. `convert.megatron_to_hf`).
        hf_config: the ``config.json`` to write (the source's, so architecture and fields are kept); its
            ``dtype`` / ``torch_dtype`` is set to ``dtype`` when given.
        tokenizer_dir: tokenizer files (`TOKENIZER_FILES`) and generation_config.json are copied from here
            when present; without a generation_config.json one is made from the config's token ids.
        max_shard_size: above this many bytes the weights go to several files plus an index.
        dtype: "bfloat16", "float16" or "float32"; None keeps the tensors' dtypes.
    """
    from safetensors.torch import save_file

    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    limit = parse_size(max_shard_size)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"export directory {out_dir} exists and is not empty; choose a new directory")
    tensors = {n: t.detach().to("cpu", _DTYPES[dtype] if dtype else t.dtype).contiguous() for n, t in tensors.items()}
    config = dict(hf_config)
    if dtype is not None:
        config["dtype" if "torch_dtype" not in config else "torch_dtype"] = dtype
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def _json(name: str, payload) -> None:
        with open(os.path.join(out_dir, name), "w") as handle:
            json.dump(payload, handle, indent=2)
        written.append(os.path.join(out_dir, name))

    _json("config.json", config)
    shards = _shards(tensors, limit)
    if len(shards) == 1:
        names = [SINGLE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _json(INDEX, {"metadata": {"total_size": total},
                      "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}})
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
        written.append(os.path.join(out_dir, name))
    copied = set()
    if tokenizer_dir:
        for name in TOKENIZER_FILES + ("generation_config.json",):
            if os.path.isfile(os.path.join(tokenizer_dir, name)):
                shutil.copy2(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
                written.append(os.path.join(out_dir, name))
                copied.add(name)
    if "generation_config.json" not in copied:
        _json("generation_config.json", _generation_config(config))
    return written
