"""Tokenizers: byte round trip, BPE train + load round trip, factory and path errors."""

import json

import pytest

from nemo_mft.data.tokenizers import ByteTokenizer, HuggingFaceTokenizer, build_tokenizer, train_bpe_tokenizer

TEXTS = ["Hello, world!", "naïve café — 日本語 🙂", "", "  spaces\tand\nnewlines  ", "</s> is just text"]


def test_byte_tokenizer_round_trip_and_ids():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259)
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode("A") == [65]
    # special ids are dropped; a broken UTF-8 sequence is replaced, not raised
    assert tok.decode([tok.bos_id, 72, 105, tok.eos_id, tok.pad_id]) == "Hi"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "the dog sat on the log", "cats and dogs"] * 20),
                      encoding="utf-8")
    out = root / "tok" / "tokenizer.json"
    assert train_bpe_tokenizer([str(corpus)], 300, str(out)) == str(out)
    return out


def test_bpe_train_load_round_trip(bpe_path):
    for source in (bpe_path, bpe_path.parent):  # the file, or its directory
        tok = HuggingFaceTokenizer(str(source))
        assert 259 < tok.vocab_size <= 300
        assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
        for text in TEXTS[:-1]:  # byte-level BPE: everything round-trips, even unseen characters
            assert tok.decode(tok.encode(text)) == text
        # as in transformers, special-token text in the data is parsed as the special token
        assert tok.encode("</s>") == [tok.eos_id]
        ids = tok.encode("the cat sat")
        assert len(ids) < len("the cat sat")  # merges were learned
        assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == "the cat sat"
    assert isinstance(build_tokenizer("huggingface", str(bpe_path)), HuggingFaceTokenizer)


def test_hf_special_tokens_from_config_and_explicit(bpe_path, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(bpe_path.read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<s>"}, "pad_token": None}))
    tok = HuggingFaceTokenizer(str(d))
    assert tok.eos_id == 1 and tok.pad_id == 0
    tok = HuggingFaceTokenizer(str(d), eos_token="<pad>", pad_token="</s>")
    assert (tok.eos_id, tok.pad_id) == (0, 2)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HuggingFaceTokenizer(str(d), eos_token="<nope>")


def test_hf_tokenizer_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: .*missing"):
        HuggingFaceTokenizer(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json in directory"):
        HuggingFaceTokenizer(str(tmp_path))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not a tokenizer")
    with pytest.raises(ValueError, match="cannot load"):
        HuggingFaceTokenizer(str(bad))


def test_bpe_train_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_bpe_tokenizer([str(tmp_path / "none.txt")], 500, str(tmp_path / "t.json"))
    (tmp_path / "c.txt").write_text("abc")
    with pytest.raises(ValueError, match="below the byte alphabet"):
        train_bpe_tokenizer([str(tmp_path / "c.txt")], 100, str(tmp_path / "t.json"))


def test_build_tokenizer_factory():
    assert isinstance(build_tokenizer("byte", None), ByteTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer type 'sentencepiece'"):
        build_tokenizer("sentencepiece", None)
    with pytest.raises(ValueError, match="needs a path"):
        build_tokenizer("huggingface", None)
    with pytest.raises(ValueError, match="takes no path"):
        build_tokenizer("byte", "/some/path")
    with pytest.raises(FileNotFoundError):
        build_tokenizer("huggingface", "/definitely/not/here")


def test_adds_bos_follows_the_post_processor(bpe_path, tmp_path):
    from tokenizers import Tokenizer, processors

    assert HuggingFaceTokenizer(bpe_path).adds_bos  # no post-processor: a tokenizer with a bos adds it
    assert ByteTokenizer().adds_bos
    tok = Tokenizer.from_file(str(bpe_path))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    for name, processor, expected in (
            ("llama3_like", processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)]), True),
            ("bytelevel_like", processors.ByteLevel(trim_offsets=False), False),  # SmolLM2, Qwen
            ("eos_only", processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)]), False)):
        tok.post_processor = processor
        path = tmp_path / name / "tokenizer.json"
        path.parent.mkdir()
        tok.save(str(path))
        loaded = HuggingFaceTokenizer(str(path))
        assert loaded.bos_id == bos and loaded.adds_bos is expected, name
