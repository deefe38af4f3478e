"""The public API: switch a Megatron-Bridge ``ConfigContainer``'s objective to MFT, and its forward step.

    apply_mft(config, mft)                                   # in place; returns config
    finetune(config, mft_forward_step(config, mft))          # megatron.bridge.training.finetune.finetune
"""

from __future__ import annotations

from typing import Callable

from nemo_mft.bridge.forward_step import BridgeMFTForwardStep
from nemo_mft.bridge.teacher import FrozenTeacherHook
from nemo_mft.bridge.validate import check_mft_config
from nemo_mft.config.schema import MFTSection

__all__ = ["apply_mft", "mft_forward_step"]


def _registered_teacher_hooks(provider) -> list:
    return [hook for hook in getattr(provider, "_pre_wrap_hooks", None) or [] if isinstance(hook, FrozenTeacherHook)]


def apply_mft(config, mft: MFTSection):
    """Switch ``config`` (a Bridge ``ConfigContainer`` with any GPT provider) to the objective ``mft``, in place.

    - Validates the combination (`validate.check_mft_config`: clear errors for ``mft.l2_init_weight > 0``,
      pipeline parallelism with a teacher, context / virtual-pipeline parallelism, FSDP, non-LoRA PEFT, ...).
    - Loss normalization as in nemo_mft's own loop: ``model.calculate_per_token_loss = True`` (the forward step
      returns per-micro-batch sums, megatron divides the gradients by the global count of answer tokens) and
      ``ddp.average_in_collective = False`` (megatron's requirement with per-token loss).
    - Teacher: with ``config.peft`` (Bridge LoRA) the base model with adapters off (nothing to add here);
      otherwise, for methods with a teacher, a `teacher.FrozenTeacherHook` pre-wrap hook on ``config.model``:
      a frozen copy of each stage with the student's layout and initial (pretrained) weights, hidden from the
      optimizer and the checkpoints. ``ft`` adds no teacher.

    Returns ``config``. Applying it twice raises ValueError.
    """
    check_mft_config(config, mft)
    provider = config.model
    if _registered_teacher_hooks(provider) or getattr(config, "_nemo_mft", None) is not None:
        raise ValueError("apply_mft() was already applied to this config")
    provider.calculate_per_token_loss = True
    if getattr(config, "ddp", None) is not None:
        config.ddp.average_in_collective = False
    if mft.objective.uses_teacher and config.peft is None:
        provider.register_pre_wrap_hook(FrozenTeacherHook(provider, config.checkpoint))
    config._nemo_mft = mft
    return config


def mft_forward_step(config, mft: MFTSection) -> Callable:
    """The forward step for ``finetune(config, forward_step)`` (`forward_step.BridgeMFTForwardStep`).

    ``config`` must have gone through `apply_mft` with the same ``mft`` (ValueError otherwise).
    """
    check_mft_config(config, mft)
    applied = getattr(config, "_nemo_mft", None)
    if applied is None:
        raise ValueError("call nemo_mft.bridge.apply_mft(config, mft) before mft_forward_step(config, mft)")
    if applied.objective != mft.objective:
        raise ValueError(f"mft_forward_step got objective {mft.objective.label!r}, but apply_mft(config, ...) was "
                         f"given {applied.objective.label!r}")
    return BridgeMFTForwardStep(mft.objective, peft=config.peft)
