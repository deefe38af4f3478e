"""Tiny random Hugging Face checkpoints of every supported family, built with transformers' own classes.

Every tensor is perturbed away from its initial value (norms start at 1, biases at 0) so a swapped or
transposed mapping cannot pass. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os

import torch

VOCAB, SEQ, BATCH = 100, 12, 2
DIVISIBLE_BY = 16  # padded vocabulary: 112 at TP=1, 128 at TP=2
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# name -> (config class, model class, extra config fields, save_pretrained max_shard_size, stored dtype)
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "20KB", torch.float32),  # sharded: index + files
    "llama_bf16": ("LlamaConfig", "LlamaForCausalLM", {}, None, torch.bfloat16),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}, None, torch.float32),
    "llama31": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE}, None, torch.float32),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4096}, None, torch.float32),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, None, torch.float32),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}, None, torch.float32),
}


def build_case(name: str, out_dir: str, seed: int = 0) -> str:
    """Save the random model ``name`` (in its stored dtype) with dummy tokenizer files into ``out_dir``; the directory."""
    import transformers

    config_cls, model_cls, extra, shard, dtype = CASES[name]
    config = getattr(transformers, config_cls)(**COMMON, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out_dir, **kwargs)
    for tok_name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(out_dir, tok_name), "w") as handle:
            json.dump({"dummy": tok_name}, handle)
    return out_dir


def hf_logits(hf_dir: str, model_cls: str, tokens: torch.Tensor) -> torch.Tensor:
    """transformers' fp32 logits [batch, seq, vocab] of the checkpoint in ``hf_dir``."""
    import transformers

    model = getattr(transformers, model_cls).from_pretrained(hf_dir, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    with torch.no_grad():
        return model(tokens).logits
