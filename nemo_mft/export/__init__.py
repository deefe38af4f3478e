"""Export of finetuned weights for deployment (Hugging Face format, as NIM and vLLM load it)."""

from nemo_mft.export.hf_llama import check_llama_compatible, convert_to_hf_llama, llama_config, save_hf_llama

__all__ = ["check_llama_compatible", "convert_to_hf_llama", "llama_config", "save_hf_llama"]
