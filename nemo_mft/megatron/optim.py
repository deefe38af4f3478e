"""Megatron DDP around the MFT chunks and the megatron-core optimizer over the student's parameters.

The teacher is invisible to both (it is not a registered submodule of `MFTModel`), so DDP buffers,
gradient all-reduces and optimizer states only ever hold student parameters.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer

from nemo_mft.config.schema import ModelSection, OptimizerSection
from nemo_mft.megatron.model import unwrap

__all__ = ["wrap_with_ddp", "build_optimizer"]


def wrap_with_ddp(chunks: list, model: ModelSection) -> list:
    """Wrap each chunk in megatron ``DistributedDataParallel`` and wire the schedule hooks.

    Sets on the (shared) TransformerConfig: ``no_sync_func`` (no gradient all-reduce until the last
    micro-batch) and ``finalize_model_grads_func`` (DP all-reduce, embedding/LN grad sync, and the division
    by the global token count for ``calculate_per_token_loss``). Grads are reduced in fp32 for bf16 params.
    """
    if len(chunks) != 1:
        raise ValueError(f"expected one model chunk per stage (no virtual pipeline), got {len(chunks)}")
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=model.params_dtype != "fp32",
        overlap_grad_reduce=False,
        use_distributed_optimizer=False,
    )
    wrapped = [DistributedDataParallel(config=unwrap(chunk).config, ddp_config=ddp_config, module=chunk)
               for chunk in chunks]
    config = unwrap(wrapped[0]).config
    config.no_sync_func = wrapped[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def build_optimizer(chunks: list, optimizer: OptimizerSection) -> MegatronOptimizer:
    """megatron-core optimizer (Adam/SGD; TE/apex fused kernels when installed, torch's otherwise).

    ``chunks`` are the DDP-wrapped chunks from `wrap_with_ddp`. bf16 params get fp32 main params.
    """
    config = unwrap(chunks[0]).config
    bf16 = config.params_dtype == torch.bfloat16
    optimizer_config = OptimizerConfig(
        optimizer=optimizer.optimizer,
        lr=optimizer.lr,
        min_lr=optimizer.min_lr,
        weight_decay=optimizer.weight_decay,
        adam_beta1=optimizer.adam_beta1,
        adam_beta2=optimizer.adam_beta2,
        adam_eps=optimizer.adam_eps,
        clip_grad=optimizer.clip_grad,
        bf16=bf16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=False,
    )
    return get_megatron_optimizer(optimizer_config, chunks)
