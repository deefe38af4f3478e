"""A tiny Hugging Face tokenizer directory with a ChatML chat template, built offline for the chat tests.

The layout is that of a model directory such as SmolLM2-Instruct's: ``tokenizer.json`` (a byte-level BPE
trained here on a few strings, with ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` as special tokens)
and ``tokenizer_config.json`` naming the special tokens and holding the chat template (or, with
``jinja_file=True``, the template in ``chat_template.jinja`` beside it).
"""

from __future__ import annotations

import json
import os
from typing import Optional

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CORPUS = ["You are a helpful assistant.", "What is the capital of France?", "The capital of France is Paris.",
          "system user assistant", "hello there, how are you today?"]

# ChatML: <|im_start|>role\ncontent<|im_end|>\n per message; generation prompt <|im_start|>assistant\n.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
GENERATION_PROMPT = "<|im_start|>assistant\n"
# As SmolLM2-Instruct's: a default system prompt before a first message that is not a system one. The
# empty conversation gets none, so an opening assistant turn breaks the prefix rule.
CHATML_DEFAULT_SYSTEM = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                         "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                         "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# A template that refuses some conversations, as Llama-2 / Mistral templates do.
ALTERNATING = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
               "{% endif %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}")


def _train_tokenizer_json(path: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    tokenizer.save(path)


def write_chat_tokenizer(directory: str, template: Optional[str] = CHATML, *, jinja_file: bool = False) -> str:
    """Write the tokenizer directory and return it. ``template=None`` leaves the chat template out."""
    os.makedirs(directory, exist_ok=True)
    _train_tokenizer_json(os.path.join(directory, "tokenizer.json"))
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "model_max_length": 2048}
    if template is not None and jinja_file:
        with open(os.path.join(directory, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(template)
    elif template is not None:
        config["chat_template"] = template
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return directory
