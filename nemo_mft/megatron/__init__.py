"""MFT on megatron-core: model (student + frozen teacher per pipeline stage), forward step, schedules.

Modules: `cpu_compat` (CPU-only redirect of megatron's CUDA calls), `parallel` (process groups),
`mft_model` (`MFTModel`), `model` (building from a `ModelSection`), `losses` (vocab-parallel loss sums),
`forward_step`, `optim` (DDP + optimizer), `schedule` (micro-batch loops, train step), `regularization`
(the L2-to-initial-weights baseline).
"""

from nemo_mft.megatron.cpu_compat import enable_cpu_fallback
from nemo_mft.megatron.forward_step import REPORT_KEYS, MFTForwardStep, make_forward_step
from nemo_mft.megatron.mft_model import MFTModel
from nemo_mft.megatron.model import (build_model, build_transformer_config, padded_vocab_size,
                                     sync_teacher_from_student, unwrap)
from nemo_mft.megatron.optim import build_optimizer, wrap_with_ddp
from nemo_mft.megatron.regularization import L2ToInitial
from nemo_mft.megatron.parallel import ParallelLayout, destroy_parallel, init_distributed, initialize_parallel
from nemo_mft.megatron.schedule import StepResult, run_microbatches, train_step

__all__ = [
    "enable_cpu_fallback", "REPORT_KEYS", "MFTForwardStep", "make_forward_step", "MFTModel", "build_model",
    "build_transformer_config", "padded_vocab_size", "sync_teacher_from_student", "unwrap", "build_optimizer",
    "wrap_with_ddp", "ParallelLayout", "destroy_parallel", "init_distributed", "initialize_parallel",
    "StepResult", "run_microbatches", "train_step", "L2ToInitial",
]
