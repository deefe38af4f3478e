"""Chat rows: rendered with the model's template, loss on exactly the tokens each assistant turn adds.

The masks are checked against an independent computation with transformers' own ``apply_chat_template``
on the same tokenizer directory (a tiny ChatML tokenizer built offline, :mod:`chat_tokenizer`).
"""

import json
import re

import pytest
import torch

from chat_tokenizer import ALTERNATING, CHATML, CHATML_DEFAULT_SYSTEM, GENERATION_PROMPT, write_chat_tokenizer
from nemo_mft.data.jsonl import read_jsonl_rows
from nemo_mft.data.samples import build_sft_dataset
from nemo_mft.data.tokenizers import ByteTokenizer, HuggingFaceTokenizer


def system(text):
    return {"role": "system", "content": text}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CONVERSATIONS = [
    [system("You are a helpful assistant."), user("What is the capital of France?"),
     assistant("The capital of France is Paris."), user("And how are you?"), assistant("hello there")],
    [assistant("hello there, how are you today?"), user("fine"), assistant("The capital is Paris.")],
    [user("hello"), assistant("hello there"), user("a last question nobody answers")],
    [system("You are a helpful assistant."), user(""), assistant("")],
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module", params=["config", "jinja_file"])
def chat_dir(request, tmp_path_factory):
    return write_chat_tokenizer(str(tmp_path_factory.mktemp("chatml")), CHATML,
                                jinja_file=request.param == "jinja_file")


@pytest.fixture(scope="module")
def reference(chat_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(chat_dir, local_files_only=True)


def _reference_ids(reference, messages, add_generation_prompt=False):
    """transformers' own rendering + tokenization; the empty conversation (which it refuses) is ChatML's
    generation prompt alone."""
    if not messages:
        return reference(GENERATION_PROMPT, add_special_tokens=False)["input_ids"]
    return list(reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=True, return_dict=False))


def _reference_sample(reference, messages, seq_length):
    """``(ids [L], loss positions in the label space [set of i with label full[i + 1] scored])``."""
    full = _reference_ids(reference, messages)
    positions = set()
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(_reference_ids(reference, messages[:k], add_generation_prompt=True))
            end = len(_reference_ids(reference, messages[: k + 1]))
            positions |= {j - 1 for j in range(start, end) if 1 <= j <= seq_length}
    return full, positions


@pytest.mark.parametrize("seq_length", [128, 40, 12])
def test_masks_match_transformers_apply_chat_template(chat_dir, reference, tmp_path, seq_length):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CONVERSATIONS])
    dataset = build_sft_dataset(path, HuggingFaceTokenizer(chat_dir), seq_length)
    assert len(dataset) == len(CONVERSATIONS)
    for row, messages in enumerate(CONVERSATIONS):
        full, positions = _reference_sample(reference, messages, seq_length)
        n = min(len(full), seq_length + 1) - 1
        assert dataset.tokens[row, :n].tolist() == full[:n]  # no bos / eos added to the template's output
        assert dataset.labels[row, :n].tolist() == full[1 : n + 1]
        assert {i for i in range(seq_length) if dataset.loss_mask[row, i]} == positions


def test_loss_covers_each_assistant_content_and_end_marker(chat_dir, reference, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATIONS[0]}])
    dataset = build_sft_dataset(path, HuggingFaceTokenizer(chat_dir), 128)
    scored = dataset.labels[0][dataset.loss_mask[0].bool()].tolist()
    text = reference.decode(scored, skip_special_tokens=False)
    assert text == "The capital of France is Paris.<|im_end|>\nhello there<|im_end|>\n"


def test_chat_rows_mix_with_the_other_formats(chat_dir, tmp_path):
    tokenizer = HuggingFaceTokenizer(chat_dir)
    rows = [{"input": "What is", "output": " Paris"}, {"messages": CONVERSATIONS[2]}, {"text": "hello"}]
    mixed = build_sft_dataset(write_jsonl(tmp_path / "mixed.jsonl", rows), tokenizer, 64)
    plain = build_sft_dataset(write_jsonl(tmp_path / "plain.jsonl", [rows[0], rows[2]]), tokenizer, 64)
    assert torch.equal(mixed.tokens[[0, 2]], plain.tokens) and torch.equal(mixed.loss_mask[[0, 2]], plain.loss_mask)
    # add_bos prepends the bos to the other formats only: the chat row starts with the template's first token
    assert mixed.tokens[0, 0].item() == tokenizer.bos_id
    assert mixed.tokens[1, :2].tolist() == tokenizer.render_chat([("user", "hello")], False)[:2]


def test_truncation_overflow_and_accounting(chat_dir, tmp_path):
    tokenizer = HuggingFaceTokenizer(chat_dir)
    long_prompt = [system("You are a helpful assistant. " * 8), user("hello"), assistant("hello there")]
    rows = [{"messages": CONVERSATIONS[2]}, {"messages": long_prompt}, {"messages": CONVERSATIONS[0]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    full_lengths = [len(tokenizer.render_chat([(m["role"], m["content"]) for m in r["messages"]], False))
                    for r in rows]
    seq_length = full_lengths[0] - 1  # the first row just fits, the others are cut
    assert full_lengths[1] > full_lengths[2] > seq_length + 1
    dataset = build_sft_dataset(path, tokenizer, seq_length)
    (acc,) = dataset.accounting
    assert (acc.rows_kept, acc.truncated, acc.first_truncated) == (3, 2, 2)
    assert (acc.without_loss, acc.first_without_loss) == (1, 2)  # the long system prompt fills the window
    assert acc.loss_tokens == dataset.num_loss_tokens > 0
    dropped = build_sft_dataset(path, tokenizer, seq_length, on_overflow="drop")
    assert dropped.source_lines == [1] and dropped.num_dropped == 2
    assert torch.equal(dropped.tokens[0], dataset.tokens[0])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: 2 of 3 rows are longer")):
        build_sft_dataset(path, tokenizer, seq_length, on_overflow="error")
    subset = build_sft_dataset(path, tokenizer, seq_length, max_samples=2, seed=1)
    assert len(subset) == 2 and subset.accounting[0].rows_read == 3


@pytest.mark.parametrize("row, message", [
    ({"messages": [user("hi")]}, r"chat row has no assistant message"),
    ({"messages": [system("s"), user("hi")]}, r"chat row has no assistant message"),
    ({"messages": []}, r"value of 'messages' must be a non-empty list of messages, got an empty list"),
    ({"messages": "hi"}, r"value of 'messages' must be a non-empty list of messages, got str"),
    ({"messages": [user("hi"), {"role": "tool", "content": "x"}]}, r"messages\[1\] has unknown role 'tool'"),
    ({"messages": [{"role": 3, "content": "x"}]}, r"messages\[0\] has unknown role 3"),
    ({"messages": [user("hi"), {"role": "assistant", "content": ["a"]}]}, r"messages\[1\] content must be a string"),
    ({"messages": [user("hi"), {"role": "assistant", "content": None}]}, r"messages\[1\] content must be a string"),
    ({"messages": [{"content": "hi"}]}, r"messages\[0\] is missing key\(s\) \['role'\]"),
    ({"messages": [user("hi"), {"role": "assistant"}]}, r"messages\[1\] is missing key\(s\) \['content'\]"),
    ({"messages": [user("hi"), "hello"]}, r"messages\[1\] must be an object with 'role' and 'content', got str"),
    ({"messages": [assistant("a")], "text": "b"}, r"row mixes keys of several formats"),
])
def test_malformed_chat_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATIONS[0]}, row])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ") + message):
        read_jsonl_rows(path)


def test_lone_surrogate_in_content(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: messages[0] content is not valid Unicode")):
        read_jsonl_rows(str(path))


def test_byte_tokenizer_has_no_chat_template(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"text": "ok"}, {"messages": CONVERSATIONS[0]}])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: tokenizer type 'byte' has no chat template")):
        build_sft_dataset(path, ByteTokenizer(), 64)


def test_hf_tokenizer_without_chat_template(tmp_path):
    tokenizer = HuggingFaceTokenizer(write_chat_tokenizer(str(tmp_path / "plain"), None))
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATIONS[1]}])
    no_template = re.escape(f"{path}:1: the Hugging Face tokenizer ") + ".*has no chat template"
    with pytest.raises(ValueError, match=no_template):
        build_sft_dataset(path, tokenizer, 64)
    assert len(build_sft_dataset(write_jsonl(tmp_path / "t.jsonl", [{"text": "hi"}]), tokenizer, 8)) == 1


def test_template_that_breaks_the_prefix_rule(tmp_path):
    tokenizer = HuggingFaceTokenizer(write_chat_tokenizer(str(tmp_path / "smol"), CHATML_DEFAULT_SYSTEM))
    # A user turn first: the default system prompt is there from the first rendering on, the rule holds.
    fine = write_jsonl(tmp_path / "fine.jsonl", [{"messages": CONVERSATIONS[2]}])
    assert build_sft_dataset(fine, tokenizer, 64).num_loss_tokens > 0
    # An assistant turn first: render([] + generation prompt) has no system prompt, render([a]) has one.
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATIONS[2]}, {"messages": CONVERSATIONS[1]}])
    broken = (re.escape(f"{path}:2: the chat template does not extend the conversation")
              + r".*messages\[:0\] \+ generation prompt .* is not a prefix of the rendering of messages\[:1\]")
    with pytest.raises(ValueError, match=broken):
        build_sft_dataset(path, tokenizer, 64)


def test_template_that_raises(tmp_path):
    tokenizer = HuggingFaceTokenizer(write_chat_tokenizer(str(tmp_path / "alt"), ALTERNATING))
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("a"), assistant("b")]},
                                                 {"messages": CONVERSATIONS[0]}])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: the chat template of ") + ".*failed: TemplateError: "
                       "Conversation roles must alternate"):
        build_sft_dataset(path, tokenizer, 64)
