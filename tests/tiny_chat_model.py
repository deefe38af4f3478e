"""A tiny random Llama with a real (small, trained here) ChatML tokenizer: an HF model directory that a
finetuning run can start from in seconds (`conf/mft_hf.yaml`), unlike the dummy tokenizers of tests/hf."""

from __future__ import annotations

import os

import torch

from chat_tokenizer import write_chat_tokenizer


def write_tiny_chat_model(directory: str, *, seed: int = 0, noise: float = 0.0) -> str:
    """LlamaForCausalLM (2 layers, hidden 32, GQA 4/2, untied) over the ChatML tokenizer's vocabulary, fp32,
    saved with its tokenizer in ``directory``; ``noise`` perturbs every weight (another "base model")."""
    import transformers
    from tokenizers import Tokenizer

    write_chat_tokenizer(directory)
    vocab = Tokenizer.from_file(os.path.join(directory, "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    if noise:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(noise * torch.randn_like(param))
    model.save_pretrained(directory)
    return directory
