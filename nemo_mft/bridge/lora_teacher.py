"""The MFT teacher under Bridge LoRA: the student's own model with its adapters disabled (no second copy).

Bridge's LoRA (``megatron.bridge.peft.lora.LoRA``) freezes the base weights and wraps the target linears in
``AdapterWrapper`` modules whose ``disable_adapter_layers()`` makes them return the base output alone; the
PEFT object's ``disable_adapter(model)`` context manager switches every wrapper off and back on. With LoRA's B
initialized to zero, the student equals this teacher at step 0.
"""

from __future__ import annotations

import torch
from megatron.core.utils import unwrap_model

__all__ = ["count_adapters", "adapters_off_forward"]


def count_adapters(model: torch.nn.Module) -> int:
    """How many modules of ``model`` (any Bridge wrapper around one chunk) can switch an adapter off."""
    return sum(1 for module in unwrap_model(model).modules()
               if callable(getattr(module, "disable_adapter_layers", None)))


@torch.no_grad()
def adapters_off_forward(peft, model: torch.nn.Module, input_ids, position_ids, attention_mask, **options):
    """The base model's output for one micro-batch: ``model`` (a Bridge-wrapped chunk with LoRA) run with its
    adapters off, in eval mode (no dropout), without a graph. Shapes as the model's forward: input_ids and
    position_ids [B, S]; returns logits [B, S, V_local] on the last pipeline stage. Train mode and the adapters
    are put back afterwards. ``options``: further keyword arguments of the model's forward."""
    was_training = model.training
    model.eval()
    try:
        with peft.disable_adapter([unwrap_model(model)]):
            return model(input_ids, position_ids, attention_mask, **options)
    finally:
        model.train(was_training)
