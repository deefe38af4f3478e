"""``nemo-mft import``: a Hugging Face model directory -> a weights-only megatron-core checkpoint.

    nemo-mft import HF_DIR OUT [--dtype bf16|fp16|fp32]

HF_DIR holds ``config.json`` and safetensors weights (one file, or shards with an index) of a supported
architecture (`nemo_mft.hf.families`). The model is built once at TP=1/PP=1 in this process, loaded with the
streaming converter (`nemo_mft.hf.load_hf_into`) and saved with `nemo_mft.training.checkpointing.save_weights`
as ``OUT/iter_0000000`` (plus the tracker): a dist checkpoint any TP/PP layout loads, which carries the model's
HF files (config.json, generation_config.json, tokenizer files, chat template) in ``iter_0000000/hf/``,
checksummed by the manifest. So OUT works as ``checkpoint.pretrained_checkpoint`` exactly like HF_DIR (the
recipe is completed from ``hf/config.json``, the tokenizer is ``hf/``) and ``nemo-mft export`` turns it, or
any checkpoint of a run started from it, back into a HF directory.

The weights are stored in ``--dtype``, by default the dtype config.json declares (``dtype`` / ``torch_dtype``;
bf16 for most published models, float32 when it names none). A run loads them into its own parameter dtype
(dist_checkpointing casts: a bf16 import initializes an fp32 run exactly). OUT must not exist or be empty.
The whole model is held in CPU memory once, in that dtype.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from nemo_mft.finetune.errors import UsageError, reported_errors

__all__ = ["import_hf_model", "import_main"]


def _check_paths(hf_dir: str, out_dir: str) -> None:
    from nemo_mft.hf.checkpoint_io import INDEX, SINGLE

    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"no Hugging Face model directory at {hf_dir}")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise FileNotFoundError(f"{hf_dir} has no config.json: not a Hugging Face model directory")
    if not any(os.path.isfile(os.path.join(hf_dir, name)) for name in (SINGLE, INDEX)):
        raise FileNotFoundError(f"{hf_dir} has no safetensors weights ({SINGLE} or {INDEX}); other weight formats "
                                "(pytorch_model.bin, GGUF) are not read: save the model with transformers' "
                                "save_pretrained (safetensors is its default)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"import directory {out_dir} is a file; choose a new directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"import directory {out_dir} is not empty; choose a new directory")


def import_hf_model(hf_dir: str, out_dir: str, *, dtype: Optional[str] = None) -> str:
    """Convert the HF model in ``hf_dir`` into a weights-only checkpoint under ``out_dir``; returns the
    checkpoint's directory (``out_dir/iter_0000000``).

    ``dtype``: "bfloat16", "float16" or "float32"; None takes config.json's. Runs in the calling process
    (see `nemo_mft.finetune.conversion.single_process_model`); without CUDA, inside
    `nemo_mft.megatron.megatron_on_cpu`. FileNotFoundError / FileExistsError / ValueError for what the user
    can fix (a missing or unsupported model, a non-empty ``out_dir``, a bad dtype).
    """
    from nemo_mft.finetune.conversion import CONVERSION_SEQ_LENGTH, canonical_dtype, config_dtype, single_process_model
    from nemo_mft.hf import load_hf_into
    from nemo_mft.megatron import unwrap
    from nemo_mft.training.base_model import HUGGINGFACE, find_base_model
    from nemo_mft.training.checkpointing import save_weights

    _check_paths(hf_dir, out_dir)
    base = find_base_model(hf_dir, seq_length=CONVERSION_SEQ_LENGTH)
    if base.format != HUGGINGFACE:  # pragma: no cover - _check_paths found config.json, find_base_model weights
        raise FileNotFoundError(f"{hf_dir} is not a Hugging Face model directory")
    dtype = canonical_dtype(dtype) if dtype is not None else config_dtype(
        base.hf_config, os.path.join(hf_dir, "config.json"))
    common = {
        "imported_from": os.path.abspath(hf_dir),
        "hf_architecture": base.hf_model.family.architecture,
        "hf_model_type": base.hf_model.family.model_type,
        "params_dtype": dtype,
    }
    with single_process_model(base.hf_model, dtype=dtype) as (chunks, layout):
        load_hf_into(unwrap(chunks[0]).student, hf_dir, base.hf_model, layout.groups)
        return save_weights(out_dir, chunks, layout, common=common, attachments=base.attachments())


def import_main(argv: Optional[Sequence[str]] = None) -> int:
    """``nemo-mft import HF_DIR OUT [--dtype ...]``; returns 0, or exits with status 2 and one line on a user
    error (`nemo_mft.finetune.errors`)."""
    with reported_errors("import"):
        return _import(argv)


def _import(argv: Optional[Sequence[str]]) -> int:
    from nemo_mft.finetune.conversion import DTYPE_CHOICES, ArgumentParser, dtype_argument

    parser = ArgumentParser(prog="nemo-mft import", description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("out", metavar="OUT", help="new (or empty) checkpoint directory")
    parser.add_argument("--dtype", type=dtype_argument, default=None,
                        help=f"stored weight dtype, one of {', '.join(DTYPE_CHOICES)} (default: config.json's)")
    args = parser.parse_args(argv)
    from nemo_mft.megatron import megatron_on_cpu

    try:
        with megatron_on_cpu():
            path = import_hf_model(args.hf_dir, args.out, dtype=args.dtype)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # a CheckpointError is a ValueError
        raise UsageError(str(err)) from err
    print(f"imported {args.hf_dir} into {path}")
    return 0
