"""Megatron DDP around the MFT chunks and the megatron-core optimizer over the student's parameters.

The teacher is invisible to both (it is not a registered submodule of `MFTModel`), so DDP buffers,
gradient all-reduces and optimizer states only ever hold student parameters.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.process_groups_config import ProcessGroupCollection

from nemo_mft.megatron.model import unwrap

__all__ = ["wrap_with_ddp", "build_optimizer"]


def wrap_with_ddp(chunks: list, groups: ProcessGroupCollection,
                  ddp_config: Optional[DistributedDataParallelConfig] = None) -> list:
    """Wrap each chunk in megatron ``DistributedDataParallel`` over ``groups`` and wire the schedule hooks.

    ``ddp_config`` defaults to gradients reduced in fp32 for 16-bit parameters, no overlap, no distributed
    optimizer. Sets on the (shared) TransformerConfig: ``no_sync_func`` (no gradient all-reduce until the
    last micro-batch) and ``finalize_model_grads_func`` (DP all-reduce, embedding/LN grad sync, and the
    division by the global token count for ``calculate_per_token_loss``).
    """
    if len(chunks) != 1:
        raise ValueError(f"expected one model chunk per stage (no virtual pipeline), got {len(chunks)}")
    config = unwrap(chunks[0]).config
    if ddp_config is None:
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=config.params_dtype != torch.float32,
                                                   overlap_grad_reduce=False, use_distributed_optimizer=False)
    wrapped = [DistributedDataParallel(config=unwrap(chunk).config, ddp_config=ddp_config, module=chunk,
                                       pg_collection=groups) for chunk in chunks]
    config.no_sync_func = wrapped[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def build_optimizer(chunks: list, optimizer_config: OptimizerConfig,
                    groups: ProcessGroupCollection) -> MegatronOptimizer:
    """megatron-core optimizer (Adam/SGD; TE/apex fused kernels when installed, torch's otherwise).

    ``chunks`` are the DDP-wrapped chunks from `wrap_with_ddp`. With bf16 parameters
    (``optimizer_config.bf16``) the optimizer keeps fp32 main parameters.
    """
    return get_megatron_optimizer(optimizer_config, chunks, use_gloo_process_groups=False, pg_collection=groups)
