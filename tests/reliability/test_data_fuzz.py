"""Property-based tests: malformed jsonl never gets past the readers as anything but a ValueError naming it.

Whatever bytes a data file holds (random bytes, broken JSON, wrong types, missing or mixed keys, huge or
empty strings, invalid UTF-8, lone surrogate escapes, deep nesting, huge integers), the readers,
``build_sft_dataset``, ``build_text_eval_dataset`` and ``load_run_data`` give a dataset or raise exactly
``ValueError`` / ``FileNotFoundError`` whose message starts with the file (``path:line`` for a bad line),
never another exception from deep inside. Byte tokenizer, and for chat rows a tiny Hugging Face tokenizer
with chat templates built offline (nothing is downloaded).
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nemo_mft.config.schema import DatasetSection, EvaluationSection, FinetuneConfig
from nemo_mft.data import ByteTokenizer, build_sft_dataset, build_text_eval_dataset, read_jsonl_rows
from nemo_mft.training.inputs import load_run_data

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOK = ByteTokenizer()
FORMATS = {"input_output": ("input", "output"), "prompt_completion": ("prompt", "completion"), "text": ("text",)}
KNOWN_KEYS = {key for keys in FORMATS.values() for key in keys}

# ---------------------------------------------------------------------------------------------------------
# Lines: each strategy gives (bytes of one line without its newline, whether the reader must accept it).

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
strings = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "x" * 100_000, "\u2028\x85", "\x00", "\ufeff"]))
extra_keys = st.dictionaries(st.text(max_size=6).filter(lambda k: k not in KNOWN_KEYS), json_values, max_size=2)


@st.composite
def valid_rows(draw) -> dict:
    """A row the reader accepts: the keys of one format with string values, plus unrelated keys."""
    keys = FORMATS[draw(st.sampled_from(sorted(FORMATS)))]
    return {**draw(extra_keys), **{key: draw(strings) for key in keys}}


def _dump(obj: object, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8")


@st.composite
def good_lines(draw) -> tuple[bytes, bool]:
    return _dump(draw(valid_rows()), draw(st.booleans())), True


@st.composite
def bad_lines(draw) -> tuple[bytes, bool]:
    """One line the reader must refuse, of a randomly chosen kind."""
    row = draw(valid_rows())
    kind = draw(st.sampled_from(["not_object", "wrong_type", "missing", "unknown", "mixed", "broken",
                                 "not_utf8", "nested", "huge_int", "surrogate"]))
    format_keys = sorted(KNOWN_KEYS & row.keys())
    if kind == "not_object":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return _dump(value, True), False
    if kind == "wrong_type":
        value = draw(json_values.filter(lambda v: not isinstance(v, str)))
        return _dump({**row, draw(st.sampled_from(format_keys)): value}, True), False
    if kind == "missing":
        pair = FORMATS[draw(st.sampled_from(["input_output", "prompt_completion"]))]
        return _dump({pair[draw(st.integers(0, 1))]: "a", **draw(extra_keys)}, True), False
    if kind == "unknown":
        return _dump(draw(extra_keys), True), False
    if kind == "mixed":
        first, second = draw(st.permutations(sorted(FORMATS)))[:2]
        return _dump({key: "a" for key in FORMATS[first] + FORMATS[second]}, True), False
    if kind == "broken":  # a strict, non-empty prefix of a JSON object never parses
        text = json.dumps(row)
        return text[: draw(st.integers(1, len(text) - 1))].encode("utf-8"), False
    if kind == "not_utf8":
        data = _dump(row, False)
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc0", b"\xf8\x88"])) + data[at:], False
    if kind == "nested":
        depth = draw(st.sampled_from([1, 3, 5_000, 200_000]))
        return (f'{{"{format_keys[0]}": ' + "[" * depth + "]" * depth + "}").encode(), False
    if kind == "huge_int":
        return _dump(row, True)[:-1] + b', "n": ' + b"9" * draw(st.integers(4_400, 20_000)) + b"}", False
    surrogate = draw(st.sampled_from(["\\ud800", "\\udbff", "\\udc00", "\\udfff"]))
    key = draw(st.sampled_from(format_keys))
    slot = "SURROGATE-SLOT-0123"  # longer than any generated key or value, so it is found only where put
    return _dump({**row, key: slot}, True).replace(slot.encode(), f"a{surrogate}b".encode()), False


blank_lines = st.tuples(st.sampled_from([b"", b"  ", b"\t\r"]), st.just(True))


def _expected_error_line(lines: list[tuple[bytes, bool]]) -> int | None:
    """The 1-based line the reader must name: the first bad line, or a blank line followed by more rows."""
    for number, (data, ok) in enumerate(lines, start=1):
        if not data.strip():
            if any(later.strip() for later, _ in lines[number:]):
                return number
        elif not ok:
            return number
    return None


def _write(path, lines: list[tuple[bytes, bool]]) -> str:
    path.write_bytes(b"".join(data + b"\n" for data, _ in lines))
    return str(path)


def _assert_names_the_file(err: BaseException, path: str, num_lines: int) -> None:
    """Exactly a ValueError whose message starts with ``path: `` or ``path:<line>: `` (line in the file)."""
    assert type(err) is ValueError, f"{type(err).__name__}: {err}"
    match = re.match(re.escape(path) + r"(?::(\d+))?: ", str(err))
    assert match, f"the message does not start with the file: {err}"
    if match.group(1) is not None:
        assert 1 <= int(match.group(1)) <= num_lines


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------------------
# The reader.

@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_give_rows_or_a_value_error_naming_the_file(workdir, data):
    path = workdir / "random.jsonl"
    path.write_bytes(data)
    try:
        rows = read_jsonl_rows(str(path))
    except Exception as err:  # noqa: BLE001 - the property is about the exception type
        _assert_names_the_file(err, str(path), data.count(b"\n") + 1)
    else:
        assert rows and all(isinstance(r.prompt, str) and isinstance(r.answer, str) for r in rows)


@FUZZ
@given(lines=st.lists(st.one_of(good_lines(), good_lines(), bad_lines(), blank_lines), min_size=1, max_size=8))
def test_the_first_malformed_line_is_named(workdir, lines):
    path = _write(workdir / "lines.jsonl", lines)
    expected = _expected_error_line(lines)
    try:
        rows = read_jsonl_rows(path)
    except Exception as err:  # noqa: BLE001
        _assert_names_the_file(err, path, len(lines))
        if expected is not None:
            assert str(err).startswith(f"{path}:{expected}: "), str(err)[:300]
        else:
            assert str(err).startswith(f"{path}: no rows")
    else:
        assert expected is None
        assert [r.line for r in rows] == [n for n, (data, _) in enumerate(lines, start=1) if data.strip()]


# ---------------------------------------------------------------------------------------------------------
# The dataset builders.

file_lines = st.one_of(
    st.lists(st.one_of(good_lines(), good_lines(), good_lines(), bad_lines()), min_size=1, max_size=6),
    st.binary(max_size=200).map(lambda data: [(line, False) for line in data.split(b"\n")]))


@FUZZ
@given(lines=file_lines, seq_length=st.integers(1, 24), on_overflow=st.sampled_from(["truncate", "drop", "error"]),
       max_samples=st.none() | st.integers(1, 6), seed=st.integers(0, 3))
def test_build_sft_dataset_gives_a_dataset_or_a_value_error(workdir, lines, seq_length, on_overflow, max_samples, seed):
    path = _write(workdir / "sft.jsonl", lines)
    try:
        dataset = build_sft_dataset(path, TOK, seq_length, max_samples=max_samples, seed=seed, on_overflow=on_overflow)
    except Exception as err:  # noqa: BLE001
        _assert_names_the_file(err, path, len(lines) + 1)
        return
    (acc,) = dataset.accounting
    assert len(dataset) == acc.rows_kept and dataset.num_loss_tokens == acc.loss_tokens
    assert acc.rows_kept + acc.dropped <= acc.rows_read and (max_samples is None or acc.rows_kept <= max_samples)
    assert dataset.source_lines == sorted(set(dataset.source_lines))
    if on_overflow != "truncate":
        assert acc.truncated == 0
    if on_overflow != "drop":
        assert acc.dropped == 0


@FUZZ
@given(lines=file_lines, seq_length=st.integers(1, 24), max_windows=st.none() | st.integers(1, 4))
def test_build_text_eval_dataset_gives_windows_or_a_value_error(workdir, lines, seq_length, max_windows):
    path = _write(workdir / "general.jsonl", lines)
    try:
        dataset = build_text_eval_dataset(path, TOK, seq_length, max_windows=max_windows)
    except Exception as err:  # noqa: BLE001
        _assert_names_the_file(err, path, len(lines) + 1)
        return
    (acc,) = dataset.accounting
    assert dataset.num_loss_tokens == acc.loss_tokens and 1 <= acc.rows_kept <= acc.rows_read
    assert max_windows is None or len(dataset) <= max_windows


# ---------------------------------------------------------------------------------------------------------
# The run's data as a whole.

mostly_valid_files = st.one_of(
    st.lists(good_lines(), min_size=1, max_size=6),
    st.lists(good_lines(), min_size=1, max_size=6).flatmap(
        lambda good: st.tuples(st.integers(0, len(good)), bad_lines()).map(
            lambda cut: good[:cut[0]] + [cut[1]] + good[cut[0]:])))


@FUZZ
@given(train=mostly_valid_files, validation=mostly_valid_files, general=st.none() | mostly_valid_files,
       replay=st.none() | mostly_valid_files, replay_fraction=st.sampled_from([0.2, 0.5]),
       seq_length=st.integers(1, 24), on_overflow=st.sampled_from(["truncate", "drop", "error"]),
       max_no_loss_fraction=st.sampled_from([0.0, 0.1, 0.5, 1.0]), max_samples=st.none() | st.integers(1, 5))
def test_load_run_data_gives_run_data_or_one_clear_error(workdir, train, validation, general, replay, replay_fraction,
                                                         seq_length, on_overflow, max_no_loss_fraction, max_samples):
    root = workdir / "root"
    root.mkdir(exist_ok=True)
    paths = {"train": _write(root / "training.jsonl", train), "validation": _write(root / "validation.jsonl", validation),
             "general": general and _write(workdir / "general.jsonl", general),
             "replay": replay and _write(workdir / "replay.jsonl", replay)}
    config = FinetuneConfig(
        dataset=DatasetSection(dataset_root=str(root), seq_length=seq_length, max_samples=max_samples,
                               replay_data=paths["replay"], replay_fraction=replay_fraction if replay else 0.0,
                               on_overflow=on_overflow, max_no_loss_fraction=max_no_loss_fraction),
        evaluation=EvaluationSection(general_data=paths["general"], max_eval_windows=4))
    try:
        run = load_run_data(config)
    except Exception as err:  # noqa: BLE001
        assert type(err) is ValueError, f"{type(err).__name__}: {err}"
        assert any(str(err).startswith(f"{p}:") for p in paths.values() if p), str(err)[:300]
        return
    expected_roles = ["train"] + ["replay"] * bool(run.num_replay) + ["validation"] + ["general"] * bool(general)
    assert [a.role for a in run.accounting] == expected_roles
    by_role = {a.role: a for a in run.accounting}
    assert all(a.path == paths[a.role] for a in run.accounting)
    for role in ("train", "replay"):
        if role in by_role:
            assert by_role[role].loss_tokens > 0 and by_role[role].without_loss_share <= max_no_loss_fraction
    for role in ("validation", "general"):
        if role in by_role:
            assert by_role[role].loss_tokens > 0
    assert len(run.train) == by_role["train"].rows_kept + run.num_replay
    assert all("\n" not in line for line in run.accounting_summary())
    json.dumps(run.accounting_dict())


# ---------------------------------------------------------------------------------------------------------
# Chat rows ({"messages": [...]}): the reader names the first malformed one, and the dataset builder with a
# Hugging Face tokenizer and its chat template (offline, tests/chat_tokenizer.py) gives a dataset or a
# ValueError naming path:line, whatever the messages and whichever of three templates (one that keeps the
# prefix rule, one that breaks it for an opening assistant turn, one that raises on some conversations).
# Rendering is slower than byte tokenization: fewer examples.

CHAT_FUZZ = settings(FUZZ, max_examples=60)
ROLES = ("system", "user", "assistant")
chat_contents = st.one_of(st.text(max_size=24), st.sampled_from(
    ["", "\n", " lead", "<|im_end|>", "<|im_start|>user\n", "{{ raise_exception('x') }}", "y" * 2_000]))


def _message(role: object, content: object) -> dict:
    return {"role": role, "content": content}


@st.composite
def chat_messages(draw) -> list[dict]:
    """A valid ``messages`` list: any roles, at least one assistant turn."""
    messages = draw(st.lists(st.builds(_message, st.sampled_from(ROLES), chat_contents), max_size=5))
    at = draw(st.integers(0, len(messages)))
    return messages[:at] + [_message("assistant", draw(chat_contents))] + messages[at:]


@st.composite
def good_chat_lines(draw) -> tuple[bytes, bool]:
    return _dump({**draw(extra_keys), "messages": draw(chat_messages())}, draw(st.booleans())), True


@st.composite
def bad_chat_lines(draw) -> tuple[bytes, bool]:
    """One chat line the reader must refuse, of a randomly chosen kind."""
    messages = draw(chat_messages())
    kind = draw(st.sampled_from(["not_list", "empty", "not_object", "no_role", "no_content", "unknown_role",
                                 "content_type", "no_assistant", "mixed", "surrogate"]))
    at = draw(st.integers(0, len(messages) - 1))
    message = messages[at]
    if kind == "not_list":
        return _dump({"messages": draw(json_values.filter(lambda v: not isinstance(v, list)))}, True), False
    if kind == "empty":
        return _dump({"messages": []}, True), False
    if kind == "not_object":
        messages[at] = draw(json_values.filter(lambda v: not isinstance(v, dict)))
    elif kind in ("no_role", "no_content"):
        del message[kind[3:]]
    elif kind == "unknown_role":
        message["role"] = draw(json_values.filter(lambda v: v not in ROLES))
    elif kind == "content_type":
        message["content"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif kind == "no_assistant":
        messages = [m for m in messages if m["role"] != "assistant"] or [_message("user", "q")]
    elif kind == "mixed":
        return _dump({"messages": messages, draw(st.sampled_from(sorted(KNOWN_KEYS))): "a"}, True), False
    else:
        slot = "SURROGATE-SLOT-0123"
        message["content"] = slot
        return _dump({"messages": messages}, True).replace(slot.encode(), b"a\\udc00b"), False
    return _dump({"messages": messages}, True), False


@pytest.fixture(scope="module")
def chat_tokenizers(tmp_path_factory):
    from chat_tokenizer import ALTERNATING, CHATML, CHATML_DEFAULT_SYSTEM, write_chat_tokenizer
    from nemo_mft.data import HuggingFaceTokenizer

    root = tmp_path_factory.mktemp("chat_tokenizers")
    return [HuggingFaceTokenizer(write_chat_tokenizer(str(root / name), template)) for name, template in
            (("chatml", CHATML), ("default_system", CHATML_DEFAULT_SYSTEM), ("alternating", ALTERNATING))]


chat_file_lines = st.lists(st.one_of(good_chat_lines(), good_chat_lines(), good_lines(), bad_chat_lines()),
                           min_size=1, max_size=5)


@CHAT_FUZZ
@given(lines=st.lists(st.one_of(good_chat_lines(), good_lines(), bad_chat_lines(), blank_lines),
                      min_size=1, max_size=6))
def test_the_first_malformed_chat_line_is_named(workdir, lines):
    path = _write(workdir / "chat_lines.jsonl", lines)
    expected = _expected_error_line(lines)
    try:
        rows = read_jsonl_rows(path)
    except Exception as err:  # noqa: BLE001
        _assert_names_the_file(err, path, len(lines))
        if expected is not None:
            assert str(err).startswith(f"{path}:{expected}: "), str(err)[:300]
    else:
        assert expected is None
        assert all(any(role == "assistant" for role, _ in r.messages) for r in rows if r.format == "chat")


@CHAT_FUZZ
@given(lines=chat_file_lines, template=st.integers(0, 2), seq_length=st.integers(1, 48),
       on_overflow=st.sampled_from(["truncate", "drop", "error"]), max_samples=st.none() | st.integers(1, 4))
def test_build_sft_dataset_with_chat_rows_gives_a_dataset_or_a_value_error(workdir, chat_tokenizers, lines, template,
                                                                           seq_length, on_overflow, max_samples):
    path = _write(workdir / "chat_sft.jsonl", lines)
    tokenizer = chat_tokenizers[template]
    try:
        dataset = build_sft_dataset(path, tokenizer, seq_length, max_samples=max_samples, on_overflow=on_overflow)
    except Exception as err:  # noqa: BLE001
        _assert_names_the_file(err, path, len(lines) + 1)
        assert re.match(re.escape(path) + r":\d+: ", str(err)), str(err)[:300]  # always a line for these files
        event(f"error: {str(err)[len(path):].split(': ')[1][:40]}")
        return
    event("dataset")
    (acc,) = dataset.accounting
    assert len(dataset) == acc.rows_kept and dataset.num_loss_tokens == acc.loss_tokens
    assert dataset.source_lines == sorted(set(dataset.source_lines))
    assert on_overflow == "drop" or acc.dropped == 0
    assert on_overflow == "truncate" or acc.truncated == 0


@CHAT_FUZZ
@given(lines=chat_file_lines)
def test_chat_rows_with_the_byte_tokenizer_name_their_line(workdir, lines):
    path = _write(workdir / "chat_byte.jsonl", lines)
    try:
        build_sft_dataset(path, TOK, 16)
    except Exception as err:  # noqa: BLE001
        _assert_names_the_file(err, path, len(lines) + 1)
    else:
        assert not any(b'"messages"' in data for data, _ in lines)
