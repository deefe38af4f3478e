"""Adapters on megatron-core's linear layers (LoRA; another kind is one more `Adapter` subclass).

`attach_lora` adds LoRA to a student GPTModel stage and freezes its base weights; the returned `AdapterSet`
goes into `nemo_mft.megatron.build_model` (``adapt=``) so that the MFT teacher is the same model with the
adapters off. Sits above `nemo_mft.megatron`, which knows adapters only through `AdapterSet`'s interface
(``disabled()``, ``sharded_state_dict()``).
"""

from nemo_mft.peft.lora import (LORA_TARGETS, TARGET_PATHS, Adapter, AdapterSet, LoRAAdapter, LoRAConfig, attach_lora,
                                lora_factory)

__all__ = ["LORA_TARGETS", "TARGET_PATHS", "Adapter", "AdapterSet", "LoRAAdapter", "LoRAConfig", "attach_lora",
           "lora_factory"]
