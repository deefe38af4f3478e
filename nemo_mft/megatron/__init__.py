"""MFT on megatron-core: model (student + frozen teacher per pipeline stage), forward step, schedules.

This layer takes plain megatron-core objects (a ``TransformerConfig``, a layer spec, a
``ProcessGroupCollection``, ``OptimizerConfig``) and the objective of `nemo_mft.methods`; it knows
nothing of recipes. Modules: `cpu_compat` (run megatron on a CPU-only machine, as a context manager),
`parallel` (process groups: the one place that reads megatron's ``parallel_state``), `mft_model`
(`MFTModel`), `model` (building), `cross_entropy` and `losses` (vocab-parallel loss sums over an explicit
group), `forward_step`, `optim` (DDP + optimizer), `schedule` (micro-batch loops, train step),
`regularization` (the L2-to-initial-weights baseline).
"""

from nemo_mft.megatron.cpu_compat import cpu_fallback_active, megatron_on_cpu
from nemo_mft.megatron.forward_step import REPORT_KEYS, MFTForwardStep, make_forward_step
from nemo_mft.megatron.mft_model import MFTModel
from nemo_mft.megatron.model import (TRANSFORMER_IMPLS, GPTOptions, build_model, gpt_layer_spec, padded_vocab_size,
                                     resolve_transformer_impl, sync_teacher_from_student,
                                     transformer_config_settings, unwrap)
from nemo_mft.megatron.optim import build_optimizer, wrap_with_ddp
from nemo_mft.megatron.parallel import (ParallelLayout, destroy_parallel, init_distributed, initialize_parallel,
                                        layout_of)
from nemo_mft.megatron.regularization import L2ToInitial
from nemo_mft.megatron.schedule import StepResult, run_microbatches, train_step, with_teacher_activations

__all__ = [
    "megatron_on_cpu", "cpu_fallback_active", "REPORT_KEYS", "MFTForwardStep", "make_forward_step", "MFTModel",
    "GPTOptions", "TRANSFORMER_IMPLS", "resolve_transformer_impl", "gpt_layer_spec", "build_model",
    "transformer_config_settings", "padded_vocab_size", "sync_teacher_from_student", "unwrap",
    "build_optimizer", "wrap_with_ddp", "ParallelLayout", "destroy_parallel", "init_distributed",
    "initialize_parallel", "layout_of", "L2ToInitial", "StepResult", "run_microbatches", "train_step",
    "with_teacher_activations",
]
