"""The forward step to hand Megatron-Bridge's ``finetune(config, forward_step)``, around our MFT loss.

Bridge's contract (``megatron.bridge.training.train.train_step`` / ``eval.evaluate`` via megatron-core's
schedules): ``forward_step(state, data_iterator, model) -> (output_tensor, loss_func)`` and
``loss_func(output_tensor) -> (loss_sum, num_tokens, {name: float tensor [sum, count]})``; Bridge sums the
reports over micro-batches and data-parallel ranks and logs sum / count. The loss is the per-micro-batch SUM,
so the provider must use ``calculate_per_token_loss=True`` (`apply.apply_mft` sets it): megatron then divides the
gradients by the global token count, exactly as nemo_mft's own loop.

The batch comes from Bridge's own ``gpt_step.get_batch`` (tokens, labels, loss_mask, position_ids of [B, S]; the
keys this pipeline stage needs, on the device). The logits [B, S, V_local] of student and teacher go to
`nemo_mft.megatron.forward_step.MFTForwardStep.loss_func` unchanged: the loss code is our own loop's, over the
tokenizer's true vocabulary (padded columns are never predicted) and the model's tensor-parallel group.

Teacher: `nemo_mft.megatron.MFTModel` runs it beside the student (frozen copy, `teacher`); under Bridge LoRA it
is the same model with adapters off (`lora_teacher`); ``ft`` runs none. During Bridge's evaluation (the model in
eval mode) only the student runs and the reported "loss" is its cross-entropy, as in our own loop.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.bridge.training.gpt_step import get_batch
from megatron.bridge.training.utils.pg_utils import get_pg_collection
from megatron.core.pipeline_parallel.utils import is_pp_last_stage
from megatron.core.rerun_state_machine import get_rerun_state_machine
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import unwrap_model

from nemo_mft.bridge.lora_teacher import adapters_off_forward, count_adapters
from nemo_mft.megatron.forward_step import MFTForwardStep, make_forward_step
from nemo_mft.megatron.mft_model import MFTModel
from nemo_mft.methods import Objective

__all__ = ["BridgeMFTForwardStep", "true_vocab_size"]


def true_vocab_size(cfg) -> int:
    """The tokenizer's vocabulary (Bridge's ``setup`` puts the tokenizer on ``cfg.dataset``), else the model's
    unpadded ``vocab_size``."""
    tokenizer = getattr(cfg.dataset, "tokenizer", None)
    if tokenizer is not None:
        return int(tokenizer.vocab_size)
    if getattr(cfg.model, "vocab_size", None) is None:
        raise ValueError("no vocabulary size: neither cfg.dataset.tokenizer nor cfg.model.vocab_size is set")
    return int(cfg.model.vocab_size)


def _has_float16_wrapper(model: torch.nn.Module) -> bool:
    """``model`` (a Bridge model chunk: DDP around the chunk) contains megatron's ``Float16Module``."""
    module = model
    while module is not None:
        if isinstance(module, Float16Module):
            return True
        module = getattr(module, "module", None)
    return False


def _check_finite(loss: torch.Tensor, cfg) -> None:
    """Bridge's NaN / Inf check of a local loss (``rerun_state_machine.check_for_nan_in_loss``)."""
    if not cfg.rerun_state_machine.check_for_nan_in_loss:
        return
    machine = get_rerun_state_machine()
    for reject, what in ((torch.isnan, "NaN"), (torch.isinf, "Inf")):
        machine.validate_result(result=loss, rejection_func=reject, message=f"found {what} in local MFT loss",
                                tolerance=0.0, fatal=True)


class BridgeMFTForwardStep:
    """Callable forward step for Bridge's ``finetune`` (see module docstring).

    objective: the training objective (`nemo_mft.methods.Objective`).
    peft: Bridge's LoRA object when the teacher is the base with adapters off, else None.
    """

    def __init__(self, objective: Objective, *, peft=None) -> None:
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a nemo_mft.methods.Objective, got {type(objective).__name__}")
        self.objective = objective
        self.peft = peft
        self._adapters_checked = False

    def _loss_step(self, state, model, evaluate: bool) -> MFTForwardStep:
        return make_forward_step(self.objective, vocab_size=true_vocab_size(state.cfg),
                                 tp_group=get_pg_collection(model).tp, evaluate=evaluate)

    def run_models(self, model, run_teacher: bool, tokens, position_ids, attention_mask):
        """(student, teacher) logits on the last stage ([B, S, V_local]; teacher None when not run), the
        stage's output tensor elsewhere. Under Bridge's mixed-precision wrapper (``Float16Module``) the logits stay
        in the model's precision (``fp32_output=False``), as in our own loop: the loss computes in fp32 itself, and
        no fp32 copy of two [B, S, V_local] tensors is made."""
        options = {"fp32_output": False} if _has_float16_wrapper(model) else {}
        if isinstance(unwrap_model(model), MFTModel):
            return model(tokens, position_ids, attention_mask, run_teacher=run_teacher, **options)
        if run_teacher and self.peft is None:
            raise RuntimeError(f"method {self.objective.method!r} needs a teacher, but the model has none: call "
                               "nemo_mft.bridge.apply_mft(config, mft) before finetune()")
        student = model(tokens, position_ids, attention_mask, **options)
        teacher = None
        if run_teacher:
            if not self._adapters_checked:
                if count_adapters(model) == 0:
                    raise RuntimeError("config.peft is LoRA but the model has no adapters (no target module "
                                       "matched): the adapters-off teacher would equal the student")
                self._adapters_checked = True
            teacher = adapters_off_forward(self.peft, model, tokens, position_ids, attention_mask, **options)
        return student, teacher

    def __call__(self, state, data_iterator, model):
        """One micro-batch: Bridge's batch, student (and teacher) forward, our loss as ``loss_func``."""
        pg_collection = get_pg_collection(model)
        (tokens, labels, loss_mask, attention_mask, position_ids, cu_seqlens, *_rest) = get_batch(
            data_iterator, state.cfg, False, pg_collection=pg_collection)
        if cu_seqlens is not None:
            raise ValueError("packed sequences (cu_seqlens in the batch) are not supported by the MFT forward step; "
                             "set dataset.packed_sequence_specs=null")
        evaluate = not model.training  # Bridge's evaluate() puts the chunks in eval mode
        step = self._loss_step(state, model, evaluate)
        output = self.run_models(model, step.runs_teacher, tokens, position_ids, attention_mask)
        if is_pp_last_stage(pg_collection.pp) and not isinstance(output, tuple):
            output = (output, None)  # a plain GPT model (ft, or LoRA in evaluation): the student's logits
        return output, partial(self._loss, step, state.cfg, labels, loss_mask)

    @staticmethod
    def _loss(step: MFTForwardStep, cfg, labels, loss_mask, output_tensor):
        loss, num_tokens, reports = step.loss_func(labels, loss_mask, output_tensor)
        _check_finite(loss, cfg)
        return loss, num_tokens, reports
