"""What ``nemo-mft import`` and ``nemo-mft export`` share: dtype names, the one-process megatron session that
holds a TP=1/PP=1 student built from an `nemo_mft.hf.HFModel`, and an argparse whose errors are one line.

Both commands run in one process: `single_process_model` initializes a one-process gloo group when none
exists (and destroys it again), creates megatron's TP=1/PP=1 groups and tears them down when it ends, so a
process may run several conversions one after the other (the tests do).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator, Mapping, Optional

import torch

from nemo_mft.finetune.errors import UsageError

__all__ = ["DTYPES", "DTYPE_CHOICES", "canonical_dtype", "config_dtype", "CONVERSION_SEQ_LENGTH",
           "single_process_model", "ArgumentParser"]

# config.json's dtype names -> torch dtypes; the command line also takes the short names.
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SHORT = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_CHOICES = ("bf16", "fp16", "fp32", "bfloat16", "float16", "float32")
# `nemo_mft.hf.describe` checks a sliding window against the sequence length a run trains on. A conversion
# trains nothing, so it describes the model for the shortest length; a run that uses the result checks its own.
CONVERSION_SEQ_LENGTH = 1


def canonical_dtype(name: str) -> str:
    """``bf16`` / ``bfloat16`` -> ``bfloat16`` (likewise fp16, fp32); ValueError for anything else."""
    name = _SHORT.get(str(name).strip().lower(), str(name).strip().lower())
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return name


def config_dtype(hf_config: Mapping, where: str) -> str:
    """The weight dtype a ``config.json`` declares (``dtype``, else ``torch_dtype``; float32 when it names none,
    transformers' default); ValueError when it names one the commands do not write (ask for --dtype)."""
    declared = hf_config.get("dtype") or hf_config.get("torch_dtype")
    if declared is None:
        return "float32"
    try:
        return canonical_dtype(declared)
    except ValueError:
        raise ValueError(f"{where} declares dtype {declared!r}; choose one with --dtype "
                         f"({', '.join(DTYPE_CHOICES)})") from None


@contextlib.contextmanager
def single_process_model(model, *, dtype: str, seed: int = 0, lora=None) -> Iterator[tuple[list, object]]:
    """``(chunks, layout)``: a TP=1/PP=1 student-only GPTModel of the `HFModel` ``model`` with every parameter
    in ``dtype``, not initialized (every weight is loaded afterwards), in megatron's one-process groups; with
    ``lora`` (a `nemo_mft.peft.LoRAConfig`) LoRA adapters on the student (``unwrap(chunks[0]).adapters``).

    Needs `nemo_mft.megatron.megatron_on_cpu` on a machine without CUDA. Runs in the calling process: starts a
    one-process gloo group when torch.distributed is not initialized (destroyed again on exit), and destroys
    megatron's groups on exit.
    """
    import torch.distributed as dist

    from nemo_mft.hf import gpt_options, layer_spec, transformer_config
    from nemo_mft.megatron import build_model, destroy_parallel, init_distributed, initialize_parallel

    config = transformer_config(model, tp_size=1, pp_size=1, params_dtype=DTYPES[dtype])
    gpt = gpt_options(model, tp_size=1, seq_length=model.max_position_embeddings)
    started = not dist.is_initialized()
    if started:
        init_distributed()
    try:
        if dist.get_world_size() != 1:
            raise ValueError(f"this command runs in one process, not in a world of {dist.get_world_size()} "
                             "(run it without torchrun)")
        layout = initialize_parallel(1, 1, seed=seed)
        try:
            adapt = None
            if lora is not None:
                from nemo_mft.peft import lora_factory

                adapt = lora_factory(lora, seed=seed, groups=layout.groups)
            chunks = build_model(config, layer_spec(model), gpt, groups=layout.groups, with_teacher=False,
                                 adapt=adapt)
            # megatron's torch norms ignore params_dtype (training casts them with its Float16Module): cast
            # every parameter, so that each tensor is stored in ``dtype``.
            chunks[0].to(DTYPES[dtype])
            yield chunks, layout
        finally:
            destroy_parallel()
    finally:
        if started:
            dist.destroy_process_group()


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose command-line errors are UsageErrors (one line, exit status 2), not usage + message."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def dtype_argument(value: Optional[str]) -> Optional[str]:
    """argparse ``type=`` for --dtype: the canonical name (an unknown one is a one-line usage error)."""
    if value is None:
        return None
    try:
        return canonical_dtype(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
