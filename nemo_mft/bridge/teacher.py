"""The frozen MFT teacher for any Megatron-Bridge GPT provider, attached by a pre-wrap hook.

Bridge builds the model in ``provider.provide_distributed_model``: ``provide()`` per pipeline stage, then the
provider's pre-wrap hooks (in registration order: e.g. AutoBridge's HF-weight loading, registered with the
provider, comes before ours; Bridge's PEFT hook, registered by ``setup()``, after), then ``.cuda()``, the
mixed-precision wrapper (``Float16Module``) and DDP. `FrozenTeacherHook` turns each GPTModel stage into
`nemo_mft.megatron.MFTModel` (student registered as ``module``; the teacher hidden from parameters, optimizer and
checkpoints, kept in eval mode, moved and cast with the student), with a teacher built by the same provider for
the same stage, so it has the student's layout (TP shards, layer spec, padded vocabulary).

Teacher weights: the weights the student starts from, also after a resume.
- ``checkpoint.pretrained_checkpoint`` set: the teacher reads that checkpoint itself (`pretrained`); Bridge then
  loads it into the student (a new run) or loads the finetuned student from ``checkpoint.load`` (a resume).
- otherwise: a bit-exact copy of the student's weights at this point (its seeded initialization, or the weights
  an earlier pre-wrap hook loaded, e.g. AutoBridge's HF import).

Building the teacher consumes no random numbers: the provider builds it without initialization and the CPU, CUDA
and megatron tracker RNG states are put back, so the student's later random streams (dropout) are those of a
run without a teacher.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

from nemo_mft.bridge.pretrained import load_pretrained_weights
from nemo_mft.megatron.mft_model import MFTModel

__all__ = ["FrozenTeacherHook"]


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Restore the CPU, CUDA and megatron-tracker RNG states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    tracker = get_cuda_rng_tracker()
    tracked = {name: state.clone() if isinstance(state, torch.Tensor) else state
               for name, state in tracker.get_states().items()}
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
        if tracked:
            tracker.set_states(tracked)


@contextlib.contextmanager
def _without_initialization(provider) -> Iterator[None]:
    """The provider builds modules without running the init methods (weights are copied in afterwards)."""
    before = provider.perform_initialization
    provider.perform_initialization = False
    try:
        yield
    finally:
        provider.perform_initialization = before


class FrozenTeacherHook:
    """Bridge pre-wrap hook: ``[GPTModel stage]`` -> ``[MFTModel(student, frozen teacher)]``.

    provider: the ``GPTModelProvider`` that builds the student (``config.model``).
    checkpoint: Bridge's ``CheckpointConfig`` (``config.checkpoint``), read when the hook runs (after every
        override), for ``pretrained_checkpoint``.
    """

    def __init__(self, provider, checkpoint) -> None:
        self.provider = provider
        self.checkpoint = checkpoint
        self.teacher_source: str | None = None  # what the teacher was filled from (the last call)

    def _build_teacher(self, student: torch.nn.Module) -> torch.nn.Module:
        with _rng_untouched(), _without_initialization(self.provider):
            teacher = self.provider.provide(pre_process=student.pre_process, post_process=student.post_process)
        teacher.model_type = getattr(student, "model_type", None)
        return teacher

    def __call__(self, model: list) -> list:
        if getattr(self.checkpoint, "pretrained_checkpoint", None) is None and \
                getattr(self.checkpoint, "load", None) is not None and getattr(self.checkpoint, "finetune", False):
            # Without pretrained_checkpoint the teacher is the student's seeded initial model: right for a run from
            # scratch and its resumes, wrong when checkpoint.load + finetune=true brings the base model in.
            raise ValueError("MFT under Megatron-Bridge: checkpoint.load with checkpoint.finetune=true starts the student "
                             "from that checkpoint, but the teacher is read from checkpoint.pretrained_checkpoint, which "
                             "is not set, so it would keep random weights; pass the base model as "
                             "checkpoint.pretrained_checkpoint instead")
        if len(model) != 1:
            raise ValueError(f"MFT under Megatron-Bridge expects one model chunk per stage (no virtual pipeline), "
                             f"got {len(model)}")
        chunks = []
        for student in model:
            if isinstance(student, MFTModel):
                raise ValueError("the model already has an MFT teacher: apply_mft() was applied twice")
            chunks.append(MFTModel(student, self._build_teacher(student)))
        pretrained = getattr(self.checkpoint, "pretrained_checkpoint", None)
        if pretrained is not None:
            self.teacher_source = load_pretrained_weights([chunk.teacher for chunk in chunks], pretrained)
        else:
            for chunk in chunks:
                chunk.sync_teacher()
            self.teacher_source = "student initial weights"
        return chunks
