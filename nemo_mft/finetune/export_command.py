"""``nemo-mft export``: a checkpoint -> a Hugging Face model directory (for NIM / vLLM / transformers).

    nemo-mft export --checkpoint ckpt/my_run --out hf/my_model [--dtype bf16] [--max-shard-size 5GB]
    nemo-mft export --checkpoint ckpt/scratch_run --out hf/my_model --run-config runs/scratch_run/config.yaml
    nemo-mft export --checkpoint ckpt/lora_run --out adapters/my_adapter --adapter [--base /models/base]

One code path for every supported architecture (`nemo_mft.hf.families`). The checkpoint (a ``checkpoint.save``
directory, whose latest iteration is taken, or one ``iter_*`` directory, of any TP/PP layout; a training
checkpoint or one written by ``nemo-mft import``) is described by a HF ``config.json``:

* a checkpoint of a run that started from a Hugging Face model (or from ``nemo-mft import``) carries the base
  model's files in ``hf/`` (`nemo_mft.training.checkpointing.BASE_MODEL_DIR`): that config.json, with its
  architecture and every field kept, is written out, with the tokenizer files, chat template and
  generation_config.json of ``hf/``;
* a checkpoint without ``hf/`` (a model trained from scratch) needs the run's resolved ``config.yaml``
  (``--run-config``): its model must be Llama-shaped (`nemo_mft.export.hf_llama.check_llama_compatible`),
  a ``LlamaForCausalLM`` config.json is made from its model section (`hf_llama.llama_config`) and the
  tokenizer files come from the run's ``tokenizer.path`` (a Hugging Face tokenizer).

Then a TP=1/PP=1 student is built from that config (`nemo_mft.hf` builders), the checkpoint's weights are
loaded into it by dist_checkpointing (any saved vocabulary padding: the config's ``vocab_size`` rows are
kept), converted with `nemo_mft.hf.megatron_to_hf` and written with `nemo_mft.hf.save_hf_dir` (sharded with an
index above ``--max-shard-size``). ``--dtype`` defaults to the config's dtype (for a model trained from
scratch: the run's ``model.params_dtype``). The whole model is held in CPU memory once, in that dtype. This
module is the command: it reads the recipe and the checkpoint (`nemo_mft.config`, `nemo_mft.training`); the
conversion itself takes plain megatron-core objects.

A checkpoint of a run with ``peft.method=lora`` holds only the adapters; its common state records the LoRA
settings (``peft``) and the base model (``base_model``: path and content sha256). The base model is found at
the recorded path (``--base PATH`` instead, when it moved) and must have the recorded content
(`nemo_mft.training.base_model.content_fingerprint`). The student is built with LoRA adapters, the adapters are
loaded from the checkpoint (`checkpointing.load_adapter_weights`), and

* without ``--adapter``: the base weights are loaded too and the adapters merged into them (``W + alpha/r B A``,
  `nemo_mft.hf.peft_format.merge_lora`): the same HF model directory as for a full checkpoint;
* with ``--adapter``: exactly ``adapter_config.json`` and ``adapter_model.safetensors`` are written, Hugging Face
  PEFT's LoRA format (`nemo_mft.hf.peft_format`), what NIM (``NIM_PEFT_SOURCE``), vLLM and ``peft`` load on top
  of the base model (the base weights are not read: the adapters do not depend on them).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from nemo_mft.config.schema import FinetuneConfig
from nemo_mft.finetune.errors import UsageError, reported_errors

__all__ = ["load_run_config", "check_export_paths", "ExportSource", "export_source", "lora_settings",
           "lora_base_model", "export_checkpoint", "export_main"]

DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' save_pretrained default


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


def check_export_paths(checkpoint: str, out_dir: str) -> str:
    """The checkpoint directory ``checkpoint`` designates; FileNotFoundError when it holds none,
    FileExistsError when ``out_dir`` is a file or a directory that is not empty (checked before any model is
    built)."""
    from nemo_mft.training.checkpointing import resolve_checkpoint

    resolved = resolve_checkpoint(checkpoint)
    if resolved is None:
        raise FileNotFoundError(f"no checkpoint at {checkpoint} (a checkpoint.save directory or one iter_* "
                                "directory)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"export directory {out_dir} is a file; choose a new directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"export directory {out_dir} is not empty; choose a new directory")
    return resolved


@dataclass(frozen=True)
class ExportSource:
    """What describes a checkpoint's model for export.

    Attributes:
        hf_config: the config.json to write (the base model's, or one made for a model trained from scratch).
        tokenizer_dir: where the tokenizer files, chat template and generation_config.json are copied from
            (None: none; a generation_config.json is made from the config's token ids).
        default_dtype: the dtype written when ``--dtype`` is not given.
        where: the origin of ``hf_config``, for messages.
    """

    hf_config: dict
    tokenizer_dir: Optional[str]
    default_dtype: str
    where: str


def _scratch_source(config: FinetuneConfig, run_config_path: str,
                    max_position_embeddings: Optional[int]) -> ExportSource:
    """A Llama config.json for the model section of a run trained from scratch (ValueError when it is not
    Llama-shaped), and the run's tokenizer directory."""
    from nemo_mft.config import builders
    from nemo_mft.data import build_tokenizer
    from nemo_mft.export.hf_llama import check_llama_compatible, llama_config

    model = config.model if config.model.is_complete else config.model.with_scratch_defaults()
    single = dataclasses.replace(model, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                 sequence_parallel=False)
    tokenizer_type = config.tokenizer.type or "byte"
    tokenizer = build_tokenizer(tokenizer_type, config.tokenizer.path)
    model_config = builders.transformer_config(single)
    gpt = builders.gpt_options(single, vocab_size=tokenizer.vocab_size, seq_length=config.dataset.seq_length)
    check_llama_compatible(model_config, gpt)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[single.params_dtype]
    hf_config = llama_config(model_config, gpt, vocab_size=builders.embedding_rows(single, tokenizer.vocab_size),
                             max_position_embeddings=max_position_embeddings or config.dataset.seq_length,
                             dtype=dtype, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    tokenizer_dir = None
    if tokenizer_type == "huggingface":
        path = config.tokenizer.path
        tokenizer_dir = path if os.path.isdir(path) else os.path.dirname(path)
    return ExportSource(hf_config, tokenizer_dir, dtype, f"the model section of {run_config_path}")


def export_source(checkpoint: str, run_config: Optional[FinetuneConfig] = None, *,
                  run_config_path: str = "the run config", max_position_embeddings: Optional[int] = None
                  ) -> ExportSource:
    """The `ExportSource` of checkpoint directory ``checkpoint``: its ``hf/`` files when it has them, else the
    run's model section (``run_config`` required: ValueError without it)."""
    from nemo_mft.hf import read_config
    from nemo_mft.training.checkpointing import BASE_MODEL_DIR, base_model_dir

    hf_dir = base_model_dir(checkpoint)
    if hf_dir is not None:
        if max_position_embeddings is not None:
            raise ValueError(f"--max-position-embeddings applies only to a model trained from scratch: {checkpoint} "
                             f"carries its base model's config.json ({BASE_MODEL_DIR}/), which is written unchanged")
        from nemo_mft.finetune.conversion import config_dtype

        hf_config = read_config(hf_dir)
        where = os.path.join(hf_dir, "config.json")
        return ExportSource(hf_config, hf_dir, config_dtype(hf_config, where), where)
    if run_config is None:
        raise ValueError(f"{checkpoint} has no {BASE_MODEL_DIR}/config.json (a model trained from scratch, not "
                         "from a Hugging Face model): pass --run-config RUN/config.yaml, the run's resolved recipe, "
                         "to describe it")
    return _scratch_source(run_config, run_config_path, max_position_embeddings)


def lora_settings(common: dict):
    """The `nemo_mft.peft.LoRAConfig` a checkpoint's common state records (``peft``), None for a checkpoint of
    full weights (no record, or ``method: none``)."""
    record = common.get("peft")
    if not record or record.get("method", "none") == "none":
        return None
    if record.get("method") != "lora":
        raise ValueError(f"the checkpoint's adapters are of method {record.get('method')!r}; export knows lora")
    from nemo_mft.peft import LoRAConfig

    return LoRAConfig(dim=record["dim"], alpha=record["alpha"], dropout=record["dropout"],
                      target_modules=tuple(record["target_modules"]))


def lora_base_model(checkpoint: str, common: dict, base: Optional[str] = None):
    """The `BaseModel` the adapters of LoRA checkpoint ``checkpoint`` belong to: at ``base`` or else the path
    its common state records; FileNotFoundError when there is none, ValueError when its content sha256 is not
    the recorded one (other weights: the adapters would not fit them)."""
    from nemo_mft.finetune.conversion import CONVERSION_SEQ_LENGTH
    from nemo_mft.training.base_model import content_fingerprint, find_base_model

    record = common.get("base_model") or {}
    path = base if base is not None else record.get("path")
    hint = "" if base is not None else " (the path recorded at training time; pass --base PATH if the base moved)"
    if path is None:
        raise ValueError(f"the LoRA checkpoint {checkpoint} records no base model path: pass --base PATH")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"the base model {path} of the LoRA checkpoint {checkpoint} is not a directory{hint}")
    try:
        found = find_base_model(path, seq_length=CONVERSION_SEQ_LENGTH)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"the base model of the LoRA checkpoint {checkpoint}: {err}{hint}") from err
    except ValueError as err:
        raise ValueError(f"the base model of the LoRA checkpoint {checkpoint}: {err}") from err
    recorded, actual = record.get("content_sha256"), content_fingerprint(found)
    if actual != recorded:
        raise ValueError(f"the base model at {path} is not the one the adapters of {checkpoint} were trained on "
                         f"(content sha256 {actual[:12]}..., recorded {str(recorded)[:12]}...); pass --base with "
                         "that base model")
    return found


def export_checkpoint(
    checkpoint: str,
    out_dir: str,
    *,
    run_config: Optional[FinetuneConfig] = None,
    run_config_path: str = "the run config",
    dtype: Optional[str] = None,
    max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
    max_position_embeddings: Optional[int] = None,
    adapter: bool = False,
    base: Optional[str] = None,
) -> list[str]:
    """Write ``checkpoint`` (a save directory or one ``iter_*`` directory) to ``out_dir`` as a HF model
    directory; returns the written file paths.

    ``run_config`` describes a checkpoint without ``hf/`` (see the module docstring); with ``hf/`` it is
    optional and only its ``checkpoint.verify_checksums`` is used. ``dtype``: "bfloat16", "float16",
    "float32" or None (the source config's). A LoRA checkpoint is merged into its base model (found at ``base``
    or the recorded path), or with ``adapter`` written as a PEFT adapter directory (module docstring). Runs in
    the calling process (it initializes a one-process torch.distributed group if none exists); without CUDA,
    inside `nemo_mft.megatron.megatron_on_cpu` (`export_main` enters it). FileNotFoundError / FileExistsError /
    ValueError for what the user can fix.
    """
    from nemo_mft.finetune.conversion import CONVERSION_SEQ_LENGTH, canonical_dtype, single_process_model
    from nemo_mft.hf import describe, megatron_to_hf, parse_size, save_hf_dir
    from nemo_mft.hf.peft_format import adapter_config, lora_to_peft, merge_lora, save_peft_dir
    from nemo_mft.megatron import unwrap
    from nemo_mft.training.base_model import load_base_weights
    from nemo_mft.training.checkpointing import load_adapter_weights, load_pretrained_weights, read_common_state

    resolved = check_export_paths(checkpoint, out_dir)
    dtype = canonical_dtype(dtype) if dtype is not None else None
    limit = parse_size(max_shard_size)
    source = export_source(resolved, run_config, run_config_path=run_config_path,
                           max_position_embeddings=max_position_embeddings)
    try:
        model = describe(source.hf_config, seq_length=CONVERSION_SEQ_LENGTH)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{source.where}: {err}") from err
    common = read_common_state(resolved)
    lora = lora_settings(common)
    for flag, given in (("--adapter", adapter), ("--base", base is not None)):
        if lora is None and given:
            raise ValueError(f"{flag} applies only to a checkpoint of a run with peft.method=lora; {resolved} holds "
                             f"full weights: export it without {flag}")
    base_model = lora_base_model(resolved, common, base) if lora is not None else None
    dtype = dtype or source.default_dtype
    verify = run_config.checkpoint.verify_checksums if run_config is not None else True
    # The model is built in the written dtype: dist_checkpointing casts while loading (rounding as .to() does),
    # and a wider dtype than the stored one holds its values exactly.
    with single_process_model(model, dtype=dtype, lora=lora) as (chunks, layout):
        if lora is not None:
            load_adapter_weights(resolved, chunks, verify_checksums=verify)
            adapters = unwrap(chunks[0]).adapters.state_dict()
        if adapter:  # the base weights are not needed (nor read)
            tensors = lora_to_peft(adapters, model, lora)
        else:
            if lora is None:
                load_pretrained_weights(resolved, chunks, vocab_size=model.vocab_size, verify_checksums=verify)
            else:
                load_base_weights(base_model, chunks, layout.groups, vocab_rows=model.vocab_size,
                                  verify_checksums=verify)
            state = {k: v for k, v in unwrap(chunks[0]).student.state_dict().items()
                     if not k.endswith("_extra_state")}
            if lora is not None:
                state = merge_lora(state, adapters, model, lora)
            tensors = megatron_to_hf(state, model)
            del state
        del chunks
    if adapter:
        config = adapter_config(model, lora, base_model_name_or_path=os.path.abspath(base or base_model.path))
        return save_peft_dir(out_dir, tensors, config, dtype=dtype)
    return save_hf_dir(out_dir, tensors, source.hf_config, tokenizer_dir=source.tokenizer_dir, max_shard_size=limit,
                       dtype=dtype)


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``nemo-mft export ...``; returns 0, or exits with status 2 and one line on a user error
    (`nemo_mft.finetune.errors`)."""
    with reported_errors("export"):
        return _export(argv)


def _export(argv: Optional[Sequence[str]]) -> int:
    from nemo_mft.finetune.conversion import DTYPE_CHOICES, ArgumentParser, dtype_argument

    parser = ArgumentParser(prog="nemo-mft export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint.save directory or one iter_* directory")
    parser.add_argument("--out", required=True, help="new (or empty) output directory")
    parser.add_argument("--run-config", default=None,
                        help="config.yaml of the run (in its logger.log_dir); required only for a checkpoint "
                             "without hf/ (a model trained from scratch)")
    parser.add_argument("--dtype", type=dtype_argument, default=None,
                        help=f"weight dtype, one of {', '.join(DTYPE_CHOICES)} (default: the source config's)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                        help="largest safetensors file before the weights are split into shards with an index, "
                             "e.g. 5GB, 500MB, 2GiB (default: %(default)s)")
    parser.add_argument("--adapter", action="store_true",
                        help="for a checkpoint of a peft.method=lora run: write the LoRA adapter in Hugging Face "
                             "PEFT's format (adapter_config.json + adapter_model.safetensors, for NIM_PEFT_SOURCE) "
                             "instead of the base model with the adapters merged")
    parser.add_argument("--base", default=None,
                        help="for a LoRA checkpoint: the base model, when it is no longer at the path recorded at "
                             "training time (its content must be the recorded one)")
    parser.add_argument("--max-position-embeddings", type=int, default=None,
                        help="context length written to a config.json made from --run-config (default: the run's "
                             "dataset.seq_length); a checkpoint with hf/ keeps its base model's")
    args = parser.parse_args(argv)
    from nemo_mft.hf import parse_size
    from nemo_mft.megatron import megatron_on_cpu

    try:
        try:
            parse_size(args.max_shard_size)  # a bad size is an error before anything is read
        except ValueError as err:
            raise ValueError(f"--max-shard-size: {err}") from None
        config = load_run_config(args.run_config) if args.run_config is not None else None
        with megatron_on_cpu():
            written = export_checkpoint(args.checkpoint, args.out, run_config=config,
                                        run_config_path=args.run_config or "the run config", dtype=args.dtype,
                                        max_shard_size=args.max_shard_size,
                                        max_position_embeddings=args.max_position_embeddings,
                                        adapter=args.adapter, base=args.base)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # a CheckpointError is a ValueError
        raise UsageError(str(err)) from err
    print(f"exported {len(written)} files to {args.out}")
    return 0
