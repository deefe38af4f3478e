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

The teacher is held outside nn.Module registration: it is not in ``parameters()``, ``buffers()``,
``state_dict()``, ``sharded_state_dict()``, never follows ``.train()`` (it stays in eval mode: no dropout),
never sees a gradient (requires_grad=False, run under ``torch.no_grad``), and so DDP, the optimizer and
checkpoints never see it. The student is registered as ``module`` (megatron's wrapper convention, so that
``get_attr_wrapped_model`` finds GPTModel attributes such as ``decoder`` and ``pre_process`` through it);
``state_dict`` / ``sharded_state_dict`` / ``load_state_dict`` are the student's, WITHOUT a prefix, so a
checkpoint of an MFT run is a plain GPTModel checkpoint.
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

    def __init__(self, student: GPTModel, teacher: Optional[GPTModel] = None) -> None:
        super().__init__(config=student.config)
        self.module = student
        self._teacher: Optional[_Unregistered] = None
        self._input_tensor: Optional[torch.Tensor] = None
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
        return self._teacher is not None

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

    def _route_stage_input(self, run_teacher: bool) -> None:
        if self.is_first_stage:
            return
        received = self._input_tensor
        if received is None:
            raise RuntimeError("MFTModel on a non-first pipeline stage needs set_input_tensor() before forward")
        if not run_teacher:
            self.module.set_input_tensor(received)
            return
        hidden = self.config.hidden_size
        if received.shape[-1] != 2 * hidden:
            raise ValueError(f"expected [S, B, 2H] = [..., {2 * hidden}] (student and teacher activations), got "
                             f"{tuple(received.shape)}: the schedule needs schedule.with_teacher_activations")
        student_in, teacher_in = received[..., :hidden], received[..., hidden:]
        self.module.set_input_tensor(student_in.contiguous())
        self.teacher.set_input_tensor(teacher_in.detach().contiguous())

    # --- forward ------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, *, run_teacher: bool = True):
        """Run the student stage and (``run_teacher``) the teacher stage under no_grad.

        input_ids, position_ids: [B, S] (used on the first stage). attention_mask: None (causal).
        Returns ``(student_logits [B, S, V_local], teacher_logits [B, S, V_local] | None)`` on the last
        stage, hidden states [S, B, H] or [S, B, 2H] (student; teacher) on the others.
        """
        if run_teacher and self._teacher is None:
            raise ValueError("run_teacher=True but this MFTModel was built without a teacher (method 'ft')")
        self._route_stage_input(run_teacher)
        student_out = self.module(input_ids, position_ids, attention_mask)
        teacher_out = None
        if run_teacher:
            teacher = self.teacher
            if teacher.training:
                raise RuntimeError("the MFT teacher must stay in eval mode")
            with torch.no_grad():
                teacher_out = teacher(input_ids, position_ids, attention_mask)
        if self.is_last_stage:
            return student_out, teacher_out
        if teacher_out is None:
            return student_out
        return torch.cat([student_out, teacher_out], dim=-1)

    # --- checkpoints: exactly the student's keys ------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        return self.module.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def state_dict_for_save_checkpoint(self, prefix: str = "", keep_vars: bool = False):
        return self.module.state_dict_for_save_checkpoint(prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
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
            if isinstance(value, torch.Tensor):
                if target[key].shape != value.shape:
                    raise ValueError(f"teacher/student layout mismatch at {key}: "
                                     f"{tuple(target[key].shape)} vs {tuple(value.shape)}")
                target[key].copy_(value)
