"""The recipe's sections turned into the plain objects the layers below take.

`nemo_mft.megatron` knows no recipe: it takes a megatron-core ``TransformerConfig``, a layer spec,
`GPTOptions`, an ``OptimizerConfig`` and an `Objective`. These functions build them from the validated
recipe (`nemo_mft.config.schema`); the training loop and the CLI call them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.optimizer import OptimizerConfig
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from nemo_mft.config.schema import SCRATCH_ARCHITECTURE, FinetuneConfig, ModelSection, OptimizerSection
from nemo_mft.megatron.model import GPTOptions, gpt_layer_spec, padded_vocab_size, transformer_config_settings

__all__ = ["PARAMS_DTYPES", "transformer_config", "layer_spec", "embedding_rows", "gpt_options", "optimizer_config",
           "adapt"]

PARAMS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _complete(model: ModelSection) -> ModelSection:
    if not model.is_complete:
        unset = [k for k in SCRATCH_ARCHITECTURE if getattr(model, k) is None]
        raise ValueError(f"model.{unset[0]} is not set: resolve the base model first "
                         "(nemo_mft.training.base_model.resolve_base_model) or use ModelSection.with_scratch_defaults()")
    return model


def transformer_config(model: ModelSection) -> TransformerConfig:
    """megatron TransformerConfig for ``model`` (complete: every architecture key set), with the settings of
    `nemo_mft.megatron.transformer_config_settings` (per-token loss normalization, no optional fusions)."""
    model = _complete(model)
    dtype = PARAMS_DTYPES[model.params_dtype]
    gated = model.activation == "swiglu"
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.kv_channels,
        normalization=model.normalization,
        layernorm_epsilon=model.layernorm_epsilon,
        activation_func=F.silu if gated else F.gelu,
        gated_linear_unit=gated,
        add_bias_linear=model.add_bias_linear,
        add_qkv_bias=model.add_qkv_bias,
        qk_layernorm=model.qk_layernorm,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        tensor_model_parallel_size=model.tensor_model_parallel_size,
        pipeline_model_parallel_size=model.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=model.virtual_pipeline_model_parallel_size,
        context_parallel_size=model.context_parallel_size,
        sequence_parallel=model.sequence_parallel,
        perform_initialization=True,
        **transformer_config_settings(),
    )


def layer_spec(model: ModelSection) -> ModuleSpec:
    """megatron-core's GPT layer spec for ``model``: TransformerEngine's or the local one (``model.transformer_impl``,
    `nemo_mft.megatron.model.resolve_transformer_impl`)."""
    model = _complete(model)
    return gpt_layer_spec(model.transformer_impl, normalization=model.normalization,
                          qk_layernorm=model.qk_layernorm)


def embedding_rows(model: ModelSection, tokenizer_vocab_size: int) -> int:
    """The model's vocabulary rows before TP padding: ``model.vocab_size``, else the tokenizer's; a tokenizer
    with more tokens than the model has rows is an error."""
    rows = model.vocab_size or tokenizer_vocab_size
    if tokenizer_vocab_size > rows:
        raise ValueError(f"the tokenizer has {tokenizer_vocab_size} tokens but model.vocab_size is {rows}: "
                         "tokens beyond the embedding could not be predicted; is it the model's own tokenizer?")
    return rows


def gpt_options(model: ModelSection, *, vocab_size: int, seq_length: int) -> GPTOptions:
    """GPTModel arguments for ``model`` whose tokenizer has ``vocab_size`` tokens: `embedding_rows` padded
    for the TP size."""
    model = _complete(model)
    return GPTOptions(
        padded_vocab_size=padded_vocab_size(embedding_rows(model, vocab_size), model.make_vocab_size_divisible_by,
                                            model.tensor_model_parallel_size),
        max_sequence_length=seq_length,
        position_embedding_type=model.position_embedding_type,
        rotary_base=model.rotary_base,
        rope_scaling_factor=model.rope_scaling_factor,
        share_embeddings_and_output_weights=model.share_embeddings_and_output_weights,
    )


def optimizer_config(optimizer: OptimizerSection, model: ModelSection) -> OptimizerConfig:
    """megatron-core OptimizerConfig (bf16 parameters get fp32 main parameters; no distributed optimizer)."""
    dtype = PARAMS_DTYPES[model.params_dtype]
    return OptimizerConfig(
        optimizer=optimizer.optimizer,
        lr=optimizer.lr,
        min_lr=optimizer.min_lr,
        weight_decay=optimizer.weight_decay,
        adam_beta1=optimizer.adam_beta1,
        adam_beta2=optimizer.adam_beta2,
        adam_eps=optimizer.adam_eps,
        clip_grad=optimizer.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=False,
    )


def adapt(config: FinetuneConfig, groups):
    """``adapt`` for `nemo_mft.megatron.build_model` from ``peft:`` (None without adapters); the adapters'
    initialization is seeded by ``train.seed``."""
    lora = config.peft.lora
    if lora is None:
        return None
    from nemo_mft.peft import lora_factory

    return lora_factory(lora, seed=config.train.seed, groups=groups)
