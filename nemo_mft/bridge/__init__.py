"""MFT inside Megatron-Bridge's own training loop (``megatron.bridge.training.finetune.finetune``).

Optional: this package needs Megatron-Bridge 0.3.1 (``pip install --no-deps megatron-bridge==0.3.1`` with the
pins of requirements/bridge.txt and requirements/bridge-nodeps.txt); no other module of nemo_mft imports it.

    config = llama32_1b_sft_config(...)                # any Bridge recipe's ConfigContainer
    apply_mft(config, MFTSection(method="mft", tau=0.25))
    finetune(config, mft_forward_step(config, mft))

Modules: `validate` (which Bridge configurations MFT supports, clear errors), `pretrained` (load a Bridge
checkpoint's weights into the teacher), `teacher` (the pre-wrap hook that gives a Bridge GPT provider's model a
frozen teacher: `nemo_mft.megatron.MFTModel`), `lora_teacher` (the Bridge-LoRA teacher: the base with adapters
off), `forward_step` (Bridge's forward-step contract around our loss), `apply` (the public API).
"""

from __future__ import annotations

import importlib.util

BRIDGE_MISSING = ("Megatron-Bridge is not installed: MFT through Bridge needs megatron-bridge==0.3.1 (pip install "
                  "--no-deps megatron-bridge==0.3.1 with the pins of requirements/bridge.txt and "
                  "requirements/bridge-nodeps.txt, in an environment with transformers < 5), or the NGC NeMo "
                  "container (see the Dockerfile)")
TE_MISSING = ("Megatron-Bridge 0.3.1 imports NVIDIA TransformerEngine when it is imported (its LoRA layers), and "
              "TransformerEngine is not installed here: use the NGC NeMo container (see the Dockerfile) or another "
              "environment with TransformerEngine. Missing: {module}")


def _require_bridge() -> None:
    try:
        found = importlib.util.find_spec("megatron.bridge") is not None
    except ModuleNotFoundError:  # no megatron namespace at all
        found = False
    if not found:
        raise ImportError(BRIDGE_MISSING)


_require_bridge()

try:
    from nemo_mft.bridge.apply import apply_mft, mft_forward_step  # noqa: E402
except ModuleNotFoundError as _err:
    if (_err.name or "").split(".")[0] != "transformer_engine":
        raise
    raise ImportError(TE_MISSING.format(module=_err.name)) from _err

__all__ = ["apply_mft", "mft_forward_step"]
