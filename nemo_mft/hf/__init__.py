"""Hugging Face checkpoints in and out of megatron-core's local GPT spec.

Modules: `families` (the declarative table of supported architectures), `config_map` (config.json ->
`HFModel` -> TransformerConfig, layer spec, GPTOptions), `checkpoint_io` (sliced safetensors reading,
writing a checkpoint directory), `convert` (streaming per-rank import, export back to HF tensors),
`peft_format` (LoRA adapters -> Hugging Face PEFT's adapter directory, or merged into the weights; import it
from its module).
"""

from nemo_mft.hf.checkpoint_io import SafetensorsReader, parse_size, save_hf_dir
from nemo_mft.hf.config_map import HFModel, describe, gpt_options, layer_spec, read_config, transformer_config
from nemo_mft.hf.convert import load_hf_into, load_hf_tensors_into, megatron_to_hf
from nemo_mft.hf.families import FAMILIES, Family, family_for, supported_architectures

__all__ = [
    "SafetensorsReader", "parse_size", "save_hf_dir", "HFModel", "describe", "gpt_options", "layer_spec",
    "read_config", "transformer_config", "load_hf_into", "load_hf_tensors_into", "megatron_to_hf", "FAMILIES",
    "Family", "family_for", "supported_architectures",
]
