"""Export of finetuned weights for deployment: the Llama config.json of a model trained from scratch (the
tensors of every architecture go through `nemo_mft.hf.megatron_to_hf` / `nemo_mft.hf.save_hf_dir`)."""

from nemo_mft.export.hf_llama import check_llama_compatible, llama_config

__all__ = ["check_llama_compatible", "llama_config"]
