"""jsonl reading: the three formats and every error kind, with file:line in the message."""

import re

import pytest

from nemo_mft.data.jsonl import read_jsonl_rows


def write(tmp_path, text, name="training.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_three_formats_detected_per_row(tmp_path):
    path = write(tmp_path, '{"input": "Q: 1+1?", "output": " 2", "id": 7}\n'
                           '{"prompt": "Say hi", "completion": " hi"}\n'
                           '{"text": "plain text"}\n\n  \n')  # trailing blank lines are fine
    rows = read_jsonl_rows(path)
    assert [(r.prompt, r.answer, r.format, r.line) for r in rows] == [
        ("Q: 1+1?", " 2", "input_output", 1),
        ("Say hi", " hi", "prompt_completion", 2),
        ("", "plain text", "text", 3),
    ]


@pytest.mark.parametrize("bad_line, message", [
    ('{"input": "a", "output": ', "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"input": "a"}', r"missing key\(s\) \['output'\]"),
    ('{"completion": "a"}', r"missing key\(s\) \['prompt'\]"),
    ('{"input": "a", "completion": "b"}', "row mixes keys of several formats"),
    ('{"text": "a", "output": "b", "input": "c"}', "row mixes keys of several formats"),
    ('{"messages": []}', "value of 'messages' must be a non-empty list"),
    ('{"input": "a", "output": 3}', "value of 'output' must be a string"),
    ('{"text": null}', "value of 'text' must be a string"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path, '{"text": "ok"}\n{"text": "ok"}\n' + bad_line + '\n{"text": "ok"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + message):
        read_jsonl_rows(path)


def test_empty_line_in_the_middle(tmp_path):
    path = write(tmp_path, '{"text": "a"}\n\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: empty line in the middle")):
        read_jsonl_rows(path)


def test_invalid_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: invalid UTF-8")):
        read_jsonl_rows(str(path))


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: no rows")):
        read_jsonl_rows(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_jsonl_rows(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("bad_line, message", [
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON: nested too deeply"),
    ('{"text": "a", "id": ' + "9" * 5000 + "}", "unsupported JSON value"),
    ('{"text": "a\\ud800b"}', r"value of 'text' is not valid Unicode: lone surrogate \\ud800 at character 1"),
    ('{"input": "\\udfff", "output": "b"}', "value of 'input' is not valid Unicode"),
])
def test_json_python_refuses_names_file_and_line(tmp_path, bad_line, message):
    # Deep nesting (RecursionError), huge integers and lone surrogates (which no tokenizer can encode)
    # used to escape as other exceptions, or later, without the line.
    path = write(tmp_path, '{"text": "ok"}\n' + bad_line + '\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ") + message):
        read_jsonl_rows(path)


def test_a_paired_surrogate_escape_is_fine(tmp_path):
    path = write(tmp_path, '{"text": "\\ud83d\\ude00"}\n')
    assert read_jsonl_rows(path)[0].answer == "\U0001F600"


def test_unreadable_path_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: cannot read")):
        read_jsonl_rows(str(tmp_path))


def test_the_first_problem_in_file_order_is_named(tmp_path):
    # A blank line followed by invalid UTF-8: the blank line comes first (found by the fuzz tests).
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n\xff{"text": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: empty line in the middle")):
        read_jsonl_rows(str(path))
