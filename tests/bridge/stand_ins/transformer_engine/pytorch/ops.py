"""TEST-ONLY stand-in for `transformer_engine.pytorch.ops`; NOT TransformerEngine (see ../../README.md).

The names Bridge 0.3.1's fused LoRA path (``megatron.bridge.peft.lora_layers``) references; that path runs only with
``use_transformer_engine_op_fuser`` and TE layers, so the placeholders are never built in the tests.
"""

from transformer_engine.pytorch._placeholder import Placeholder


class Sequential(Placeholder):
    """Placeholder for ``te.ops.Sequential``."""


class Linear(Placeholder):
    """Placeholder for ``te.ops.Linear``."""


class LayerNorm(Placeholder):
    """Placeholder for ``te.ops.LayerNorm``."""


class RMSNorm(Placeholder):
    """Placeholder for ``te.ops.RMSNorm``."""


class Quantize(Placeholder):
    """Placeholder for ``te.ops.Quantize``."""


class MakeExtraOutput(Placeholder):
    """Placeholder for ``te.ops.MakeExtraOutput``."""


class AddExtraInput(Placeholder):
    """Placeholder for ``te.ops.AddExtraInput``."""


class ConstantScale(Placeholder):
    """Placeholder for ``te.ops.ConstantScale``."""


class Dropout(Placeholder):
    """Placeholder for ``te.ops.Dropout``."""
