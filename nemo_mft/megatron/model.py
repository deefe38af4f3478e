"""Build the MFT model chunks of this pipeline stage from plain megatron-core objects.

Inputs are what megatron-core itself takes: a ``TransformerConfig``, a transformer layer spec
(`gpt_layer_spec`: TransformerEngine's where TE and a GPU are present, else the local spec, which needs
neither TE nor apex), the GPTModel arguments in `GPTOptions`, and the process groups
(``ProcessGroupCollection``). Both specs write the same distributed-checkpoint keys (the local spec maps its
norms to TE's fused names), so a checkpoint saved under one loads under the other.
The teacher (``with_teacher``) is a second GPTModel with the same config, spec and stage, whose weights
are copied from the freshly built student, so both start bit-identical; `sync_teacher_from_student`
copies again after a pretrained checkpoint was loaded into the student.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from nemo_mft.megatron.mft_model import MFTModel

__all__ = ["GPTOptions", "TRANSFORMER_IMPLS", "resolve_transformer_impl", "gpt_layer_spec", "load_weights",
           "transformer_config_settings", "padded_vocab_size", "check_supported_layout", "build_model",
           "sync_teacher_from_student", "unwrap"]

POSITION_EMBEDDINGS = ("rope", "learned_absolute")


@dataclass(frozen=True)
class GPTOptions:
    """The arguments of megatron-core's ``GPTModel`` beside its config and layer spec.

    Attributes:
        padded_vocab_size: the model's vocabulary columns, all TP ranks together (`padded_vocab_size`);
            columns at or beyond the tokenizer's vocabulary are padding and never predicted.
        max_sequence_length: longest sequence the model sees, in tokens.
        position_embedding_type: "rope" or "learned_absolute".
        rotary_base: RoPE theta.
        share_embeddings_and_output_weights: the output layer reuses the input embedding (tied).
        rope_scaling_factor: Llama 3.1 ("llama3") rope scaling with this factor, None for none; megatron-core
            fixes its other parameters (low 1, high 4, original context 8192).
    """

    padded_vocab_size: int
    max_sequence_length: int
    position_embedding_type: str = "rope"
    rotary_base: int = 10000
    share_embeddings_and_output_weights: bool = False
    rope_scaling_factor: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("padded_vocab_size", "max_sequence_length", "rotary_base"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.position_embedding_type not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding_type must be one of {POSITION_EMBEDDINGS}, "
                             f"got {self.position_embedding_type!r}")
        if self.rope_scaling_factor is not None and not (
                isinstance(self.rope_scaling_factor, (int, float)) and self.rope_scaling_factor > 0):
            raise ValueError(f"rope_scaling_factor must be None or > 0, got {self.rope_scaling_factor!r}")


TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")


def resolve_transformer_impl(requested: str) -> str:
    """The layer implementation ``requested`` stands for on this machine: "local" or "transformer_engine".

    "auto" is TransformerEngine where it is installed (megatron-core's own probe) and a CUDA GPU is
    present, else megatron-core's local modules; "transformer_engine" without either is a ValueError.
    """
    if requested not in TRANSFORMER_IMPLS:
        raise ValueError(f"transformer_impl must be one of {TRANSFORMER_IMPLS}, got {requested!r}")
    have_te, have_gpu = gpt_layer_specs.HAVE_TE, torch.cuda.is_available()
    if requested == "auto":
        return "transformer_engine" if have_te and have_gpu else "local"
    if requested == "transformer_engine" and not (have_te and have_gpu):
        missing = "TransformerEngine is not installed" if not have_te else "no CUDA GPU is visible"
        raise ValueError(f"transformer_impl=transformer_engine, but {missing}; use transformer_impl=auto or "
                         "local (megatron-core's local modules)")
    return requested


def gpt_layer_spec(transformer_impl: str, *, normalization: str, qk_layernorm: bool) -> ModuleSpec:
    """megatron-core's GPT layer spec for `resolve_transformer_impl` of ``transformer_impl``.

    ``normalization`` ("LayerNorm" or "RMSNorm") selects the local spec's norm modules; TE's modules read it
    from the ``TransformerConfig``. ``qk_layernorm``: a norm on queries and keys (Qwen3).
    """
    if resolve_transformer_impl(transformer_impl) == "transformer_engine":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization=normalization, qk_layernorm=qk_layernorm)


def load_weights(module: torch.nn.Module, state: dict) -> list[str]:
    """``module.load_state_dict(state, strict=False)``; returns the keys that do not fit (missing weights,
    unexpected keys), empty when all is well. Only TransformerEngine's ``_extra_state`` entries (FP8 metadata)
    may be missing: a checkpoint of the local spec has none, and Megatron-Bridge's reader drops them."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    return [key for key in missing if not key.endswith("_extra_state")] + list(unexpected)


def transformer_config_settings() -> dict:
    """``TransformerConfig`` fields this layer expects, with either layer spec.

    Per-token loss normalization (the loss function returns (sum, token count) and finalize_model_grads
    divides by the global count), CPU initialization on a machine without CUDA, and none of megatron-core's
    optional fusions (they need apex or torch.compile; TE's modules bring their own fused kernels).
    """
    return dict(calculate_per_token_loss=True, use_cpu_initialization=not torch.cuda.is_available(),
                bias_activation_fusion=False, masked_softmax_fusion=False, bias_dropout_fusion=False,
                apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False)


def padded_vocab_size(vocab_size: int, divisible_by: int, tp_size: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``divisible_by * tp_size`` (megatron's padding rule)."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if divisible_by < 1 or tp_size < 1:
        raise ValueError(f"divisible_by and tp_size must be >= 1, got {divisible_by} and {tp_size}")
    multiple = divisible_by * tp_size
    return -(-vocab_size // multiple) * multiple


def check_supported_layout(config: TransformerConfig, layer_spec: ModuleSpec,
                           groups: ProcessGroupCollection) -> None:
    """ValueError for layouts the MFT model does not support, or that differ from the process groups."""
    if config.virtual_pipeline_model_parallel_size is not None:
        raise ValueError("virtual pipeline stages (virtual_pipeline_model_parallel_size) are not supported: "
                         "the teacher runs stage by stage beside the student")
    if config.context_parallel_size != 1:
        raise ValueError(f"context parallelism is not supported (context_parallel_size="
                         f"{config.context_parallel_size}); use 1")
    sizes = {"tensor_model_parallel_size": groups.tp.size(), "pipeline_model_parallel_size": groups.pp.size(),
             "context_parallel_size": groups.cp.size()}
    for name, actual in sizes.items():
        if getattr(config, name) != actual:
            raise ValueError(f"{name}={getattr(config, name)} in the TransformerConfig, but the process groups "
                             f"have {actual}: the student and teacher layouts must match the process groups")
    if config.sequence_parallel and layer_spec.submodules.input_layernorm is WrappedTorchNorm:
        raise ValueError("sequence_parallel needs NVIDIA apex's fused LayerNorm with megatron-core's local "
                         "transformer spec (torch norms and RMSNorm do not support it there); disable it")


def _build_gpt(config: TransformerConfig, layer_spec: ModuleSpec, gpt: GPTOptions,
               groups: ProcessGroupCollection) -> GPTModel:
    stage, stages = groups.pp.rank(), groups.pp.size()
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        vocab_size=gpt.padded_vocab_size,
        max_sequence_length=gpt.max_sequence_length,
        pre_process=stage == 0,
        post_process=stage == stages - 1,
        parallel_output=True,
        share_embeddings_and_output_weights=gpt.share_embeddings_and_output_weights,
        position_embedding_type=gpt.position_embedding_type,
        rotary_base=gpt.rotary_base,
        rope_scaling=gpt.rope_scaling_factor is not None,
        rope_scaling_factor=gpt.rope_scaling_factor if gpt.rope_scaling_factor is not None else 8.0,
        pg_collection=groups,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def build_model(config: TransformerConfig, layer_spec: ModuleSpec, gpt: GPTOptions, *,
                groups: ProcessGroupCollection, with_teacher: bool,
                adapt: Optional[Callable[[GPTModel], torch.nn.Module]] = None) -> list[MFTModel]:
    """The model chunks of this pipeline stage: ``[MFTModel]`` (one chunk; VPP is not supported).

    The student is a GPTModel over ``gpt.padded_vocab_size`` columns (this rank's stage and TP shard);
    with ``with_teacher`` a frozen teacher with the same config, stage and initial weights sits beside it.
    ``adapt`` (e.g. `nemo_mft.peft.lora_factory`) attaches adapters to the student and returns them (a
    module with ``disabled()`` and ``sharded_state_dict()``; the student's base weights frozen): then only
    the adapters train and the teacher is the student with its adapters off (no copy). Not DDP-wrapped
    (`optim.wrap_with_ddp`).
    """
    if gpt.padded_vocab_size % groups.tp.size():
        raise ValueError(f"padded_vocab_size {gpt.padded_vocab_size} is not divisible by the tensor-parallel "
                         f"size {groups.tp.size()} (use padded_vocab_size())")
    check_supported_layout(config, layer_spec, groups)
    student = _build_gpt(config, layer_spec, gpt, groups)
    if adapt is not None:
        return [MFTModel(student, adapters=adapt(student), adapters_off_teacher=with_teacher)]
    teacher = None
    if with_teacher:
        # Same config, but skip the random init: the weights are copied from the student just below.
        teacher = _build_gpt(dataclasses.replace(config, perform_initialization=False), layer_spec, gpt, groups)
    chunk = MFTModel(student, teacher)
    chunk.sync_teacher()
    return [chunk]


def unwrap(chunk: torch.nn.Module) -> MFTModel:
    """The MFTModel inside megatron wrappers (DistributedDataParallel, Float16Module)."""
    module = chunk
    while not isinstance(module, MFTModel):
        if not hasattr(module, "module"):
            raise TypeError(f"no MFTModel inside {type(chunk).__name__}")
        module = module.module
    return module


def sync_teacher_from_student(chunks: list) -> None:
    """Copy each chunk's student weights into its teacher (after loading a pretrained checkpoint).

    Call BEFORE a resume loads the finetuned student: the teacher is always the base model.
    """
    for chunk in chunks:
        unwrap(chunk).sync_teacher()
