"""`MFTModel`: one pipeline stage of the student GPT plus, beside it, the frozen teacher of the same stage.

Shapes (megatron-core 0.16.1 GPTModel): B micro-batch size, S sequence length, H hidden size,
V_local = padded vocab / TP. With sequence parallelism the hidden states between stages are [S/TP, B, H].

- Last stage: ``forward`` returns ``(student_logits, teacher_logits)``, each [B, S, V_local] (the
  teacher's is None when the teacher is not run); GPTModel with labels=None returns [b, s, v].
- Other stages: ``forward`` returns the hidden states sent to the next stage: [S, B, H] for the student
  alone, or [S, B, 2H] = cat(student, teacher) along the hidden dimension when the teacher runs (the
  layout of ModelOpt's distillation; the last dimension is never split by sequence parallelism). The
  schedule learns the wider shape through megatron-core's own hook, ``adjust_tensor_shapes_fn``
  (`schedule.with_teacher_activations`); the micro-batch size it sees is the true one.
  ``set_input_tensor`` keeps the received tensor and ``forward`` splits it again.

With adapters (e.g. LoRA, `nemo_mft.peft`; registered as ``adapters``: a module with ``disabled()`` and
``sharded_state_dict()``; the base weights frozen) the
teacher can be the student itself with its adapters off (``adapters_off_teacher``): run in eval mode under
no_grad, it is exactly the base model and costs no second copy of the weights; checkpoints then hold only
the adapters.

A separate teacher is held outside nn.Module registration: it is not in ``parameters()``, ``buffers()``,
``state_dict()``, ``sharded_state_dict()``, never follows ``.train()`` (it stays in eval mode: no dropout;
it does follow device and dtype moves such as ``.cuda()`` and ``.bfloat16()``), never sees a gradient
(requires_grad=False, run under ``torch.no_grad``), and so DDP, the optimizer and checkpoints never see it.
The student is registered as ``module`` (megatron's wrapper convention, so that ``get_attr_wrapped_model``
finds GPTModel attributes such as ``decoder`` and ``pre_process`` through it); ``state_dict`` /
``sharded_state_dict`` / ``load_state_dict`` are the student's, WITHOUT a prefix, so a checkpoint of an MFT
run is a plain GPTModel checkpoint.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import MegatronModule

__all__ = ["MFTModel"]


class _Unregistered:
    """Holds a module without registering it in the owning nn.Module."""

    __slots__ = ("module",)

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module


def _check_same_layout(student: GPTModel, teacher: GPTModel) -> None:
    """Raise ValueError unless teacher and student hold the same stage of the same parallel layout."""
    for attr in ("pre_process", "post_process"):
        if getattr(student, attr) != getattr(teacher, attr):
            raise ValueError(f"teacher/student layout mismatch: {attr} is {getattr(teacher, attr)} for the "
                             f"teacher and {getattr(student, attr)} for the student (same pipeline stage required)")
    s_shapes = {k: tuple(v.shape) for k, v in student.state_dict().items() if isinstance(v, torch.Tensor)}
    t_shapes = {k: tuple(v.shape) for k, v in teacher.state_dict().items() if isinstance(v, torch.Tensor)}
    if s_shapes != t_shapes:
        diff = sorted(set(s_shapes.items()) ^ set(t_shapes.items()))[:4]
        raise ValueError(f"teacher/student layout mismatch (same config, TP/PP split required); e.g. {diff}")


class MFTModel(MegatronModule):
    """Student GPTModel stage (trainable, registered as ``module``) + optional frozen teacher stage."""

    def __init__(self, student: GPTModel, teacher: Optional[GPTModel] = None, *,
                 adapters: Optional[torch.nn.Module] = None, adapters_off_teacher: bool = False) -> None:
        """``teacher``: a frozen copy of the student stage; or, with ``adapters`` (attached to ``student``,
        whose base weights are frozen) and ``adapters_off_teacher``, the teacher is the student itself with
        its adapters off (no second copy of any weight)."""
        super().__init__(config=student.config)
        self.module = student
        self._teacher: Optional[_Unregistered] = None
        self._input_tensor: Optional[torch.Tensor] = None
        if adapters_off_teacher and (adapters is None or teacher is not None):
            raise ValueError("adapters_off_teacher needs adapters and no separate teacher")
        self.adapters = adapters  # registered: DDP, the optimizer and checkpoints see the adapters
        self._adapters_off_teacher = adapters_off_teacher
        if teacher is not None:
            _check_same_layout(student, teacher)
            teacher.eval()
            teacher.requires_grad_(False)
            self._teacher = _Unregistered(teacher)

    # --- access -------------------------------------------------------------------------------------
    @property
    def student(self) -> GPTModel:
        return self.module

    @property
    def teacher(self) -> Optional[GPTModel]:
        return None if self._teacher is None else self._teacher.module

    @property
    def has_teacher(self) -> bool:
        return self._teacher is not None or self._adapters_off_teacher

    @property
    def teacher_is_base(self) -> bool:
        """The teacher is the student with its adapters off (LoRA), not a separate copy."""
        return self._adapters_off_teacher

    @property
    def is_first_stage(self) -> bool:
        return bool(self.module.pre_process)

    @property
    def is_last_stage(self) -> bool:
        return bool(self.module.post_process)

    # --- pipeline plumbing --------------------------------------------------------------------------
    def set_input_tensor(self, input_tensor) -> None:
        """Keep the tensor received from the previous stage ([S, B, H or 2H]); ``forward`` splits it."""
        if isinstance(input_tensor, (list, tuple)):
            if len(input_tensor) != 1:
                raise ValueError(f"MFTModel expects one input tensor per stage, got {len(input_tensor)}")
            input_tensor = input_tensor[0]
        self._input_tensor = input_tensor

    def _stage_inputs(self, run_teacher: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(student input, teacher input) received from the previous stage; (None, None) on the first."""
        if self.is_first_stage:
            return None, None
        received = self._input_tensor
        if received is None:
            raise RuntimeError("MFTModel on a non-first pipeline stage needs set_input_tensor() before forward")
        if not run_teacher:
            return received, None
        hidden = self.config.hidden_size
        if received.shape[-1] != 2 * hidden:
            raise ValueError(f"expected [S, B, 2H] = [..., {2 * hidden}] (student and teacher activations), got "
                             f"{tuple(received.shape)}: the schedule needs schedule.with_teacher_activations")
        return received[..., :hidden].contiguous(), received[..., hidden:].detach().contiguous()

    @torch.no_grad()
    def _teacher_forward(self, teacher_in, input_ids, position_ids, attention_mask):
        if not self._adapters_off_teacher:
            teacher = self.teacher
            if teacher.training:
                raise RuntimeError("the MFT teacher must stay in eval mode")
            if teacher_in is not None:
                teacher.set_input_tensor(teacher_in)
            return teacher(input_ids, position_ids, attention_mask)
        # The base model: the student's own weights, adapters off, in eval mode (no dropout), no graph.
        was_training = self.module.training
        self.module.eval()
        try:
            with self.adapters.disabled():
                if teacher_in is not None:
                    self.module.set_input_tensor(teacher_in)
                return self.module(input_ids, position_ids, attention_mask)
        finally:
            self.module.train(was_training)

    # --- forward ------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, *, run_teacher: bool = True):
        """Run the student stage and (``run_teacher``) the teacher stage under no_grad.

        input_ids, position_ids: [B, S] (used on the first stage). attention_mask: None (causal).
        Returns ``(student_logits [B, S, V_local], teacher_logits [B, S, V_local] | None)`` on the last
        stage, hidden states [S, B, H] or [S, B, 2H] (student; teacher) on the others.
        """
        if run_teacher and not self.has_teacher:
            raise ValueError("run_teacher=True but this MFTModel was built without a teacher (method 'ft')")
        student_in, teacher_in = self._stage_inputs(run_teacher)
        if student_in is not None:  # set right before each forward: with adapters the module is shared
            self.module.set_input_tensor(student_in)
        student_out = self.module(input_ids, position_ids, attention_mask)
        teacher_out = None
        if run_teacher:
            teacher_out = self._teacher_forward(teacher_in, input_ids, position_ids, attention_mask)
        if self.is_last_stage:
            return student_out, teacher_out
        if teacher_out is None:
            return student_out
        return torch.cat([student_out, teacher_out], dim=-1)

    # --- device and dtype moves: the teacher follows the student ------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        """``.cuda()``, ``.to()``, ``.bfloat16()``... move the unregistered teacher too (a wrapper such as
        megatron's ``Float16Module`` or Megatron-Bridge's ``get_model`` moves the chunk after it is built)."""
        super()._apply(fn, *args, **kwargs)
        if self._teacher is not None:
            self._teacher.module._apply(fn, *args, **kwargs)
        return self

    # --- checkpoints: what trains: the student's keys, or only the adapters' --------------------------
    def _trained(self) -> torch.nn.Module:
        return self.adapters if self.adapters is not None else self.module

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        return self._trained().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def state_dict_for_save_checkpoint(self, prefix: str = "", keep_vars: bool = False):
        return self.state_dict(prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self._trained().load_state_dict(state_dict, strict=strict, assign=assign)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        """The trained weights: the student's (GPTModel keys), or with adapters only the adapters'."""
        if self.adapters is not None:
            return self.adapters.sharded_state_dict(prefix=prefix, sharded_offsets=sharded_offsets, metadata=metadata)
        return self.base_sharded_state_dict(prefix, sharded_offsets, metadata)

    def base_sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        """The student's base weights (GPTModel keys, adapters excluded): what a pretrained checkpoint fills."""
        return self.module.sharded_state_dict(prefix=prefix, sharded_offsets=sharded_offsets, metadata=metadata)

    @torch.no_grad()
    def sync_teacher(self) -> None:
        """Copy the student's current weights into the teacher (bit-exact)."""
        if self._teacher is None:
            return
        source = self.module.state_dict()
        target = self.teacher.state_dict()
        if source.keys() != target.keys():
            raise ValueError("teacher/student layout mismatch: different state_dict keys")
        for key, value in source.items():
            if isinstance(value, torch.Tensor) and not key.endswith("_extra_state"):  # TE's FP8 metadata
                if target[key].shape != value.shape:
                    raise ValueError(f"teacher/student layout mismatch at {key}: "
                                     f"{tuple(target[key].shape)} vs {tuple(value.shape)}")
                target[key].copy_(value)
