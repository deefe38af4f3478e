"""The run's base model (``checkpoint.pretrained_checkpoint``): what it is, and the recipe it completes.

A base model is one of

* a **Hugging Face model directory**: ``config.json`` and safetensors weights (``model.safetensors`` or
  shards with ``model.safetensors.index.json``), usually with its tokenizer files and chat template;
* a **megatron-core dist checkpoint** (a ``checkpoint.save`` directory or one ``iter_*`` directory), which
  carries the HF files of the model it came from in ``hf/`` when it was written by ``nemo-mft import`` or
  by a run that started from an HF model (`checkpointing.BASE_MODEL_DIR`).

When HF files are found, `resolve_base_model` fills the recipe from them: every architecture key the
recipe leaves null comes from config.json, a key it sets must agree (else one error naming both values),
and the tokenizer (with its special tokens and chat template) is the model's own unless the recipe names
another. Without HF files, null architecture keys take the from-scratch defaults and the tokenizer must be
given. Everything here runs before any process group exists.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

from nemo_mft.config.schema import ARCHITECTURE_KEYS, FinetuneConfig, ModelSection, TokenizerSection
from nemo_mft.hf import HFModel, describe, read_config
from nemo_mft.hf.checkpoint_io import INDEX, SINGLE, TOKENIZER_FILES

logger = logging.getLogger("nemo_mft")

__all__ = ["BaseModel", "find_base_model", "resolve_base_model", "architecture_from_hf", "base_model_files",
           "load_base_weights", "content_fingerprint"]

HUGGINGFACE, MEGATRON = "huggingface", "megatron"

# config.json's name of each architecture key, for error messages.
_HF_NAMES = {
    "num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads", "ffn_hidden_size": "intermediate_size", "kv_channels": "head_dim",
    "layernorm_epsilon": "rms_norm_eps", "rotary_base": "rope_theta", "rope_scaling_factor": "rope scaling factor",
    "share_embeddings_and_output_weights": "tie_word_embeddings", "vocab_size": "vocab_size",
    "add_qkv_bias": "the architecture's q/k/v biases", "qk_layernorm": "the architecture's q/k norms",
    "normalization": "the architecture (RMSNorm)", "activation": "hidden_act (SwiGLU)",
    "position_embedding_type": "the architecture (rope)", "add_bias_linear": "the architecture (no linear biases)",
}


@dataclass(frozen=True)
class BaseModel:
    """A run's initial weights.

    Attributes:
        path: the checkpoint directory to load: the HF directory, or the resolved ``iter_*`` directory.
        format: ``"huggingface"`` (safetensors, converted while loading) or ``"megatron"`` (dist checkpoint).
        hf_dir: the directory with the HF config.json and tokenizer files (the HF directory itself, or a
            checkpoint's ``hf/``), None for a megatron checkpoint without them.
        hf_config: the parsed config.json (None without ``hf_dir``).
        hf_model: its `HFModel` for the run's sequence length (None without ``hf_dir``).
    """

    path: str
    format: str
    hf_dir: Optional[str] = None
    hf_config: Optional[dict] = None
    hf_model: Optional[HFModel] = None

    def describe(self) -> str:
        kind = f"{self.hf_model.family.architecture} " if self.hf_model is not None else ""
        return f"{kind}{'Hugging Face model' if self.format == HUGGINGFACE else 'megatron checkpoint'} {self.path}"

    def attachments(self) -> dict[str, str]:
        """{path inside a checkpoint: file} of the HF files every checkpoint of this run carries."""
        from nemo_mft.training.checkpointing import BASE_MODEL_DIR

        return {os.path.join(BASE_MODEL_DIR, name): path for name, path in base_model_files(self.hf_dir).items()}


_SAMPLES, _SAMPLE_BYTES = 64, 1 << 16


def _sampled_file_digest(path: str, digest) -> None:
    """Feed ``digest`` the size, the safetensors header and 64 evenly spaced 64 KiB blocks of ``path``."""
    size = os.path.getsize(path)
    digest.update(f"{os.path.basename(path)}:{size}".encode())
    with open(path, "rb") as handle:
        header = handle.read(8)
        digest.update(header)
        if len(header) == 8:
            digest.update(handle.read(min(int.from_bytes(header, "little"), size)))
        for i in range(_SAMPLES):
            handle.seek(size * i // _SAMPLES)
            digest.update(handle.read(_SAMPLE_BYTES))


def content_fingerprint(base: BaseModel) -> str:
    """A sha256 that identifies the base model's weights, cheap enough for every run start.

    A megatron checkpoint: the sha256 of its manifest (which holds the sha256 of every file: exact). An HF
    directory: config.json, then per weights file its size, safetensors header (names, shapes, offsets) and
    64 evenly spaced 64 KiB blocks of its data (sampled: another finetune of the same architecture differs
    in every block, while reading 16 GB would cost a minute per run).
    """
    import hashlib

    from nemo_mft.training.checkpointing import MANIFEST_FILE

    digest = hashlib.sha256()
    if base.format == MEGATRON:
        manifest = os.path.join(base.path, MANIFEST_FILE)
        target = manifest if os.path.isfile(manifest) else os.path.join(base.path, "metadata.json")
        with open(target, "rb") as handle:
            digest.update(handle.read())
        return digest.hexdigest()
    with open(os.path.join(base.path, "config.json"), "rb") as handle:
        digest.update(handle.read())
    for name in sorted(os.listdir(base.path)):
        if name.endswith(".safetensors"):
            _sampled_file_digest(os.path.join(base.path, name), digest)
    return digest.hexdigest()


def base_model_files(hf_dir: Optional[str]) -> dict[str, str]:
    """{file name: path} of the config, generation config, tokenizer and chat-template files in ``hf_dir``."""
    if hf_dir is None:
        return {}
    names = ("config.json", "generation_config.json") + TOKENIZER_FILES
    return {name: os.path.join(hf_dir, name) for name in names if os.path.isfile(os.path.join(hf_dir, name))}


def _is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and (
        os.path.isfile(os.path.join(path, SINGLE)) or os.path.isfile(os.path.join(path, INDEX)))


def find_base_model(path: str, *, seq_length: int) -> BaseModel:
    """The `BaseModel` at ``path``; FileNotFoundError when there is none, ValueError for an HF model the
    converter cannot reproduce (its message lists what is supported)."""
    from nemo_mft.training.checkpointing import base_model_dir, resolve_checkpoint

    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint.pretrained_checkpoint {path} is not a directory")
    if _is_hf_dir(path):
        hf_dir, fmt, load = path, HUGGINGFACE, path
    elif os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(os.path.join(path, "metadata.json")):
        raise FileNotFoundError(f"checkpoint.pretrained_checkpoint {path} has a config.json but no safetensors weights "
                                f"({SINGLE} or {INDEX}); other weight formats (pytorch_model.bin, GGUF) are not read: "
                                "save the model with transformers' save_pretrained (safetensors is its default)")
    else:
        load = resolve_checkpoint(path)
        if load is None:
            raise FileNotFoundError(f"checkpoint.pretrained_checkpoint {path} holds neither a Hugging Face model "
                                    "(config.json + safetensors) nor a megatron checkpoint")
        hf_dir, fmt = base_model_dir(load), MEGATRON
    if hf_dir is None:
        return BaseModel(path=load, format=fmt)
    hf_config = read_config(hf_dir)
    try:
        hf_model = describe(hf_config, seq_length=seq_length)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{os.path.join(hf_dir, 'config.json')}: {err}") from err
    return BaseModel(path=load, format=fmt, hf_dir=hf_dir, hf_config=hf_config, hf_model=hf_model)


def architecture_from_hf(model: HFModel) -> dict[str, Any]:
    """The ModelSection architecture values (`ARCHITECTURE_KEYS`) that build ``model`` in megatron-core."""
    if model.rope_theta != int(model.rope_theta):
        raise ValueError(f"rope_theta {model.rope_theta} is not an integer (model.rotary_base is)")
    values = {
        "num_layers": model.num_layers, "hidden_size": model.hidden_size,
        "num_attention_heads": model.num_attention_heads, "num_query_groups": model.num_query_groups,
        "ffn_hidden_size": model.ffn_hidden_size, "kv_channels": model.head_dim, "normalization": "RMSNorm",
        "layernorm_epsilon": model.norm_eps, "activation": "swiglu", "position_embedding_type": "rope",
        "rotary_base": int(model.rope_theta), "rope_scaling_factor": model.rope_scaling_factor,
        "add_bias_linear": False, "add_qkv_bias": model.qkv_bias, "qk_layernorm": model.qk_norm,
        "share_embeddings_and_output_weights": model.tied, "vocab_size": model.vocab_size,
    }
    assert set(values) == set(ARCHITECTURE_KEYS)
    return values


def _fill_model(model: ModelSection, base: BaseModel) -> ModelSection:
    config_json = os.path.join(base.hf_dir, "config.json")
    values = architecture_from_hf(base.hf_model)
    conflicts = [f"model.{key}={getattr(model, key)!r} but {config_json} gives {values[key]!r} "
                 f"({_HF_NAMES[key]})" for key in ARCHITECTURE_KEYS
                 if getattr(model, key) is not None and getattr(model, key) != values[key]]
    if conflicts:
        raise ValueError("the recipe contradicts its base model: " + "; ".join(conflicts) + ". Leave these keys "
                         "unset (null) to take the base model's values")
    try:
        return dataclasses.replace(model, **values)
    except ValueError as err:
        raise ValueError(f"{err} (the model of {config_json})") from None


def _fill_tokenizer(tokenizer: TokenizerSection, base: BaseModel) -> TokenizerSection:
    if base.hf_dir is None:
        if tokenizer.type is None:
            raise ValueError(f"tokenizer.type is null and the base model {base.path} carries no tokenizer (a "
                             "megatron checkpoint without Hugging Face files): set tokenizer.type and tokenizer.path")
        if tokenizer.type == "huggingface" and not tokenizer.path:
            raise ValueError("tokenizer.path is required for tokenizer.type=huggingface (the base model "
                             f"{base.path} carries no tokenizer)")
        return tokenizer
    if tokenizer.type == "byte":
        raise ValueError(f"tokenizer.type=byte, but the base model is a Hugging Face model with its own tokenizer "
                         f"({base.hf_dir}); leave tokenizer.type null (or huggingface)")
    if tokenizer.path is None and not os.path.isfile(os.path.join(base.hf_dir, "tokenizer.json")):
        raise ValueError(f"the base model's directory {base.hf_dir} has no tokenizer.json: set tokenizer.path to "
                         "the model's tokenizer")
    return TokenizerSection(type="huggingface", path=tokenizer.path or base.hf_dir)


def resolve_base_model(config: FinetuneConfig) -> tuple[FinetuneConfig, Optional[BaseModel]]:
    """``(complete config, base model or None)``: the recipe with every architecture key and the tokenizer
    filled in (see the module docstring). A config without ``checkpoint.pretrained_checkpoint`` is returned
    as it is (the schema completed it)."""
    path = config.checkpoint.pretrained_checkpoint
    if path is None:
        return config, None
    base = find_base_model(path, seq_length=config.dataset.seq_length)
    if base.hf_model is None:
        model = config.model.with_scratch_defaults()
    else:
        model = _fill_model(config.model, base)
        limit = base.hf_model.max_position_embeddings
        if config.dataset.seq_length > limit:
            logger.warning("dataset.seq_length %d is longer than the base model's max_position_embeddings %d",
                           config.dataset.seq_length, limit)
    tokenizer = _fill_tokenizer(config.tokenizer, base)
    return dataclasses.replace(config, model=model, tokenizer=tokenizer), base


def load_base_weights(base: BaseModel, chunks, groups, *, vocab_rows: int, verify_checksums: bool = True) -> None:
    """Load ``base`` into this rank's student stage (collective), then copy the student into the teacher.

    An HF model is converted while it is read: each rank reads only its pipeline stage's tensors and its TP
    slices (`nemo_mft.hf.load_hf_into`). A megatron checkpoint is loaded by dist_checkpointing, resharded to
    this layout (`checkpointing.load_pretrained_weights`). ``vocab_rows``: the model's vocabulary rows before
    TP padding (a checkpoint padded otherwise must hold them all).
    """
    from nemo_mft.hf import load_hf_into
    from nemo_mft.megatron import sync_teacher_from_student, unwrap
    from nemo_mft.training.checkpointing import load_pretrained_weights

    if base.format == HUGGINGFACE:
        for chunk in chunks:
            load_hf_into(unwrap(chunk).student, base.path, base.hf_model, groups)
    else:
        load_pretrained_weights(base.path, chunks, vocab_size=vocab_rows, verify_checksums=verify_checksums)
    sync_teacher_from_student(chunks)
