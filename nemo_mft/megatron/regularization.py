"""L2-to-initial-weights regularization (L2-SP), a forgetting baseline beside MFT.

Adds ``weight / 2 * ||theta - theta_0||^2`` to the per-token mean loss, where ``theta_0`` are the
weights the run started from (the pretrained checkpoint). It is applied as a gradient term,
``grad += weight * (theta - theta_0)``, after megatron has finalized the gradients of the loss (data-
parallel all-reduce and the division by the global token count) and before the optimizer step, so it is
the same on every data-parallel rank and independent of the number of micro-batches or tokens.

Each rank holds ``theta_0`` for its own parameter shards only. When the chunk has a frozen teacher, its
parameters ARE ``theta_0`` (the teacher is the initial model and never changes), so no copy is made;
without one (method ``ft``) a detached copy of the initial student weights is kept: one more model's
worth of memory per rank, the price of this baseline.
"""

from __future__ import annotations

import torch

from nemo_mft.megatron.model import unwrap

__all__ = ["L2ToInitial"]


class L2ToInitial:
    """``grad += weight * (theta - theta_0)`` for every trainable student parameter.

    Build it from the (unwrapped or DDP-wrapped) chunks once the initial weights are in place, BEFORE a
    resume loads the finetuned student. Call `add_to_grads` between the backward passes and the optimizer
    step.
    """

    def __init__(self, chunks: list, weight: float) -> None:
        if weight < 0:
            raise ValueError(f"L2-to-init weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        for chunk in chunks:
            model = unwrap(chunk)
            anchors = dict(model.teacher.named_parameters()) if model.has_teacher else {}
            for name, param in model.student.named_parameters():
                if not param.requires_grad:
                    continue
                anchor = anchors.get(name)
                if anchor is None:
                    anchor = param.detach().clone()
                elif not torch.equal(anchor, param.detach()):  # False for another shape too
                    raise ValueError(f"L2-to-init: the teacher's {name} is not the student's initial value; "
                                     "build the regularizer right after the pretrained weights are loaded")
                self.pairs.append((param, anchor))

    @torch.no_grad()
    def add_to_grads(self) -> None:
        """Add ``weight * (theta - theta_0)`` to each parameter's gradient (megatron's ``main_grad`` when
        DDP-wrapped, else ``.grad``). A no-op for weight 0."""
        if self.weight == 0.0:
            return
        for param, anchor in self.pairs:
            grad = getattr(param, "main_grad", None)
            if grad is None:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                grad = param.grad
            grad.add_(param.detach().to(grad.dtype) - anchor.to(grad.dtype), alpha=self.weight)
