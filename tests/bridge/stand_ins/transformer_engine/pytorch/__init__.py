"""TEST-ONLY stand-in for `transformer_engine.pytorch`; NOT TransformerEngine (see ../../README.md).

Holds only the names Megatron-Bridge 0.3.1 touches at import time or in ``isinstance`` checks:
``Linear`` and ``LayerNormLinear`` (``megatron.bridge.peft.lora`` / ``lora_layers``: base class of
``TELinearAdapter``, ``isinstance`` / ``__class__ ==`` checks), ``ops`` (type annotations and the fused-LoRA path,
which needs ``use_transformer_engine_op_fuser``, off in the tests) and ``fp8_autocast``. Every class refuses to be
built, so a code path that really needs TransformerEngine fails loudly instead of running on a placeholder. Submodules
that Bridge probes inside ``try``/``except ImportError`` (``optimizers``, ``module``) are deliberately absent, so those
probes take their non-TE fallbacks.
"""

import contextlib

from transformer_engine.pytorch import ops  # noqa: F401  (te.ops.* placeholders)
from transformer_engine.pytorch._placeholder import Placeholder


class Linear(Placeholder):
    """Placeholder for ``transformer_engine.pytorch.Linear`` (subclassed by Bridge's ``TELinearAdapter``)."""


class LayerNormLinear(Placeholder):
    """Placeholder for ``transformer_engine.pytorch.LayerNormLinear`` (``isinstance`` checks in Bridge's LoRA)."""


@contextlib.contextmanager
def fp8_autocast(enabled: bool = False, **kwargs):
    """Placeholder for ``te.fp8_autocast``: only ``enabled=False`` is accepted (no FP8 on the stand-in)."""
    if enabled:
        raise RuntimeError("TEST-ONLY transformer_engine stand-in: FP8 needs the real TransformerEngine")
    yield
