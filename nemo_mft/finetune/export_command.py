"""``nemo-mft export``: a finetuning checkpoint -> a Hugging Face Llama directory for NIM / vLLM.

    nemo-mft export --run-config runs/my_run/config.yaml --checkpoint ckpt/my_run --out hf/my_model

The run's resolved ``config.yaml`` (written by ``nemo-mft finetune``) gives the model and tokenizer. The
checkpoint (a ``checkpoint.save`` directory, whose latest iteration is taken, or one ``iter_*`` directory)
may have been saved under any TP/PP layout: megatron-core's dist_checkpointing reassembles it into a
single-process (TP=1, PP=1) model, whose weights are converted by `nemo_mft.export.hf_llama`. The whole
model is held in CPU memory once (2 bytes per parameter in bf16). This module is the command: it reads the
recipe and the checkpoint (`nemo_mft.config`, `nemo_mft.training`); the conversion itself takes plain
megatron-core objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Optional, Sequence

from nemo_mft.config.schema import FinetuneConfig
from nemo_mft.finetune.errors import UsageError, reported_errors

__all__ = ["load_run_config", "check_export_paths", "export_checkpoint", "export_main"]


def load_run_config(path: str) -> FinetuneConfig:
    """The validated recipe of a run from its resolved ``config.yaml``; ValueError (naming the file) when it is
    not YAML, has a key outside the schema or an invalid value, FileNotFoundError when it is missing."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from nemo_mft.config import validate_config
    from nemo_mft.config.checks import omegaconf_error_text, unknown_key_message

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no run config at {path} (the config.yaml in a run's logger.log_dir)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(FinetuneConfig), OmegaConf.load(path))
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise ValueError(f"{path}: {unknown_key_message(err.full_key)}") from err
    except OmegaConfBaseException as err:
        raise ValueError(f"{path}: {omegaconf_error_text(err)}") from err
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    try:
        return validate_config(merged)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def export_checkpoint(
    config: FinetuneConfig,
    checkpoint: str,
    out_dir: str,
    *,
    dtype: str = "bfloat16",
    max_position_embeddings: Optional[int] = None,
) -> list[str]:
    """Load ``checkpoint`` into a TP=1/PP=1 student built from ``config`` and write it as HF Llama.

    Runs in the calling process (it initializes a one-process torch.distributed group if none exists);
    without CUDA, inside `nemo_mft.megatron.megatron_on_cpu` (`export_main` enters it). Returns the
    written file paths.
    """
    from nemo_mft.config import builders
    from nemo_mft.data import build_tokenizer
    from nemo_mft.export.hf_llama import check_llama_compatible, save_hf_llama
    from nemo_mft.megatron import build_model, init_distributed, initialize_parallel, unwrap
    from nemo_mft.training.checkpointing import load_pretrained_weights

    tokenizer = build_tokenizer(config.tokenizer.type, config.tokenizer.path)
    single = dataclasses.replace(config.model, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                 sequence_parallel=False)
    model_config = builders.transformer_config(single)
    gpt = builders.gpt_options(single, vocab_size=tokenizer.vocab_size, seq_length=config.dataset.seq_length)
    check_llama_compatible(model_config, gpt)  # fail before any model is built
    check_export_paths(checkpoint, out_dir)
    init_distributed()
    layout = initialize_parallel(1, 1, seed=config.train.seed)
    chunks = build_model(model_config, builders.layer_spec(single), gpt, groups=layout.groups, with_teacher=False)
    load_pretrained_weights(checkpoint, chunks, vocab_size=tokenizer.vocab_size,
                            verify_checksums=config.checkpoint.verify_checksums)
    state = {k: v for k, v in unwrap(chunks[0]).student.state_dict().items() if not k.endswith("_extra_state")}
    return save_hf_llama(
        out_dir, state, model_config, gpt, vocab_size=tokenizer.vocab_size,
        max_position_embeddings=max_position_embeddings or config.dataset.seq_length, dtype=dtype,
        tokenizer_path=config.tokenizer.path if config.tokenizer.type == "huggingface" else None,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
    )


def check_export_paths(checkpoint: str, out_dir: str) -> None:
    """FileNotFoundError when ``checkpoint`` holds no checkpoint, FileExistsError when ``out_dir`` is a file
    or a directory that is not empty (checked before any model is built)."""
    from nemo_mft.training.checkpointing import resolve_checkpoint

    if resolve_checkpoint(checkpoint) is None:
        raise FileNotFoundError(f"no checkpoint at {checkpoint} (a checkpoint.save directory or one iter_* "
                                "directory)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"export directory {out_dir} is a file; choose a new directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"export directory {out_dir} is not empty; choose a new directory")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose command-line errors are UsageErrors (one line, exit status 2), not usage + message."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``nemo-mft export ...``; returns 0, or exits with status 2 and one line on a user error
    (`nemo_mft.finetune.errors`)."""
    with reported_errors("export"):
        return _export(argv)


def _export(argv: Optional[Sequence[str]]) -> int:
    parser = _ArgumentParser(prog="nemo-mft export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-config", required=True, help="config.yaml of the run (in its logger.log_dir)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.save directory or one iter_* directory")
    parser.add_argument("--out", required=True, help="new (or empty) output directory")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--max-position-embeddings", type=int, default=None,
                        help="context length written to config.json (default: the run's dataset.seq_length)")
    args = parser.parse_args(argv)
    from nemo_mft.megatron import megatron_on_cpu

    try:
        config = load_run_config(args.run_config)
        with megatron_on_cpu():
            written = export_checkpoint(config, args.checkpoint, args.out, dtype=args.dtype,
                                        max_position_embeddings=args.max_position_embeddings)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise UsageError(str(err)) from err
    print(f"exported {len(written)} files to {args.out}")
    return 0
