"""A tiny Megatron-Bridge finetuning recipe, built like Bridge's own (a function returning a ConfigContainer), for the
smoke run of this example: a 2-layer Llama-like GPT (RMSNorm, SwiGLU, RoPE, GQA) on megatron-core's local layer
spec in fp32, Bridge's FinetuningDatasetConfig on JSONL files of {"input", "output"} rows, a Hugging Face tokenizer
directory. Everything is a field the YAML file or key=value overrides can change (dataset.dataset_root,
tokenizer.tokenizer_model, checkpoint.*, train.*, model.num_layers, ...).

    nemo-mft bridge --recipe tiny_recipe:tiny_llama_sft_config dataset.dataset_root=DATA tokenizer.tokenizer_model=TOK
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.bridge.models.gpt_provider import GPTModelProvider, local_layer_spec
from megatron.bridge.training.config import (CheckpointConfig, ConfigContainer, DistributedDataParallelConfig,
                                             DistributedInitConfig, FinetuningDatasetConfig, LoggerConfig,
                                             OptimizerConfig, RNGConfig, SchedulerConfig, TrainingConfig)
from megatron.bridge.training.tokenizers.config import TokenizerConfig

SEQ_LENGTH = 64


def tiny_llama_sft_config() -> ConfigContainer:
    """Full-weight SFT of the tiny GPT (see the module docstring); 4 iterations of 4 sequences."""
    model = GPTModelProvider(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2, kv_channels=16,
        normalization="RMSNorm", layernorm_epsilon=1e-5, activation_func=F.silu, gated_linear_unit=True,
        add_bias_linear=False, add_qkv_bias=False, position_embedding_type="rope", rotary_base=10000,
        share_embeddings_and_output_weights=False, seq_length=SEQ_LENGTH, make_vocab_size_divisible_by=128,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.02,
        params_dtype=torch.float32, fp16=False, bf16=False, pipeline_dtype=torch.float32,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, sequence_parallel=False,
        transformer_layer_spec=local_layer_spec, cross_entropy_loss_fusion=False, gradient_accumulation_fusion=False,
        bias_activation_fusion=False, bias_dropout_fusion=False, masked_softmax_fusion=False,
        apply_rope_fusion=False, persist_layer_norm=False,
    )
    return ConfigContainer(
        model=model,
        train=TrainingConfig(train_iters=4, micro_batch_size=2, global_batch_size=4, eval_interval=4, eval_iters=0),
        optimizer=OptimizerConfig(optimizer="adam", lr=1e-3, min_lr=1e-3, weight_decay=0.0, clip_grad=1.0,
                                  bf16=False, fp16=False, params_dtype=torch.float32, use_distributed_optimizer=False),
        ddp=DistributedDataParallelConfig(use_distributed_optimizer=False, overlap_grad_reduce=False,
                                          overlap_param_gather=False, grad_reduce_in_fp32=True),
        scheduler=SchedulerConfig(lr_decay_style="constant", lr_warmup_iters=0, lr_decay_iters=4,
                                  start_weight_decay=0.0, end_weight_decay=0.0, weight_decay_incr_style="constant"),
        dataset=FinetuningDatasetConfig(dataset_root=None, seq_length=SEQ_LENGTH, num_workers=0, pin_memory=False,
                                        do_validation=False, do_test=False, dataset_kwargs={"pad_to_max_length": True}),
        logger=LoggerConfig(log_interval=1, tensorboard_dir=None, log_timers_to_tensorboard=False),
        tokenizer=TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=None),
        checkpoint=CheckpointConfig(save=None, load=None, save_interval=4, ckpt_format="torch_dist", async_save=False,
                                    use_persistent_ckpt_worker=False, fully_parallel_save=False),
        dist=DistributedInitConfig(distributed_backend="gloo", disable_jit_fuser=True, use_gloo_process_groups=True),
        rng=RNGConfig(seed=1234),
        mixed_precision=None,
    )
