"""Build the MFT model chunks of this pipeline stage from a `ModelSection` (megatron-core local spec).

TransformerEngine is not required: layers come from ``get_gpt_layer_local_spec``. The teacher (every
method but "ft") is a second GPTModel with the same TransformerConfig and the same stage, whose weights
are copied from the freshly built student, so both start bit-identical; `sync_teacher_from_student` copies
again after a pretrained checkpoint was loaded into the student.
"""

from __future__ import annotations

import dataclasses
import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from nemo_mft.config.schema import METHODS, ModelSection
from nemo_mft.megatron.mft_model import MFTModel

__all__ = ["padded_vocab_size", "build_transformer_config", "build_model", "sync_teacher_from_student",
           "unwrap", "check_supported_layout"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def padded_vocab_size(vocab_size: int, model: ModelSection) -> int:
    """Round ``vocab_size`` up to a multiple of make_vocab_size_divisible_by * tensor_model_parallel_size."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    multiple = model.make_vocab_size_divisible_by * model.tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def check_supported_layout(model: ModelSection) -> None:
    """ValueError for layouts the MFT model does not support, or that differ from megatron's groups."""
    if model.virtual_pipeline_model_parallel_size is not None:
        raise ValueError("virtual pipeline stages (model.virtual_pipeline_model_parallel_size) are not "
                         "supported: the teacher runs stage by stage beside the student")
    if model.context_parallel_size != 1:
        raise ValueError(f"context parallelism is not supported (model.context_parallel_size="
                         f"{model.context_parallel_size}); use 1")
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("megatron parallel state is not initialized: call initialize_parallel() first")
    groups = {
        "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": parallel_state.get_pipeline_model_parallel_world_size(),
        "context_parallel_size": parallel_state.get_context_parallel_world_size(),
    }
    for name, actual in groups.items():
        if getattr(model, name) != actual:
            raise ValueError(f"model.{name}={getattr(model, name)} but the initialized parallel state has "
                             f"{actual}: the student and teacher layouts must match the process groups")
    if model.sequence_parallel and _layer_spec(model).submodules.input_layernorm is WrappedTorchNorm:
        raise ValueError("model.sequence_parallel needs NVIDIA apex's fused LayerNorm with megatron-core's local "
                         "transformer spec (torch norms and RMSNorm do not support it there); disable it")
    if parallel_state.get_virtual_pipeline_model_parallel_world_size() not in (None, 1):
        raise ValueError("virtual pipeline parallelism is initialized in megatron's parallel state; not supported")


def build_transformer_config(model: ModelSection) -> TransformerConfig:
    """megatron TransformerConfig for ``model``: per-token loss normalization, no fused kernels needing TE/apex.

    ``calculate_per_token_loss=True``: the loss function returns (sum, token count) per micro-batch and
    finalize_model_grads divides the gradients by the global token count.
    """
    dtype = _DTYPES[model.params_dtype]
    gated = model.activation == "swiglu"
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.kv_channels,
        normalization=model.normalization,
        activation_func=F.silu if gated else F.gelu,
        gated_linear_unit=gated,
        add_bias_linear=model.add_bias_linear,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        tensor_model_parallel_size=model.tensor_model_parallel_size,
        pipeline_model_parallel_size=model.pipeline_model_parallel_size,
        context_parallel_size=model.context_parallel_size,
        sequence_parallel=model.sequence_parallel,
        calculate_per_token_loss=True,
        use_cpu_initialization=not torch.cuda.is_available(),
        perform_initialization=True,
        # Fusions off: they need TE/apex or torch.compile, which the local spec does not assume.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )


def _layer_spec(model: ModelSection):
    """megatron-core's local (no TransformerEngine) GPT layer spec for ``model``."""
    return get_gpt_layer_local_spec(normalization=model.normalization)


def _build_gpt(config: TransformerConfig, model: ModelSection, padded_vocab: int, seq_length: int) -> GPTModel:
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(model),
        vocab_size=padded_vocab,
        max_sequence_length=seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=True),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=True),
        parallel_output=True,
        share_embeddings_and_output_weights=model.share_embeddings_and_output_weights,
        position_embedding_type=model.position_embedding_type,
        rotary_base=model.rotary_base,
    )
    if torch.cuda.is_available():
        gpt.cuda(torch.cuda.current_device())
    return gpt


def build_model(model: ModelSection, *, vocab_size: int, seq_length: int, method: str) -> list[MFTModel]:
    """The model chunks of this pipeline stage: ``[MFTModel]`` (one chunk; VPP is not supported).

    The student is a GPTModel over ``padded_vocab_size(vocab_size, model)`` columns; for every method but
    "ft" a frozen teacher with the same config, stage and initial weights sits beside it. Not DDP-wrapped.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    check_supported_layout(model)
    config = build_transformer_config(model)
    padded = padded_vocab_size(vocab_size, model)
    student = _build_gpt(config, model, padded, seq_length)
    teacher = None
    if method != "ft":
        # Same config, but skip the random init: the weights are copied from the student just below.
        teacher_config = dataclasses.replace(config, perform_initialization=False)
        teacher = _build_gpt(teacher_config, model, padded, seq_length)
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
