"""Reading jsonl training / evaluation files into (prompt, answer) rows, with file:line errors.

One JSON object per line, in one of three formats, detected per row (a file may mix rows of
different formats, but a single row may not mix keys of two formats):

=========================  ==================  =====================================
keys                       prompt              answer (the part that gets loss)
=========================  ==================  =====================================
``{"input", "output"}``    ``input``           ``output``   (NeMo / Megatron-Bridge SFT)
``{"prompt", "completion"}`` ``prompt``        ``completion`` (NeMo Customizer)
``{"text"}``               ``""``              ``text``     (loss on every token)
=========================  ==================  =====================================

Other keys (``"id"``, ``"category"``, ...) are ignored. Prompt and answer are used as given: any
separator or template belongs in the data. Chat rows (``{"messages": [...]}``) are not supported.

Every problem raises ``ValueError("<path>:<line>: <what>")`` (1-based line numbers): invalid JSON or
UTF-8 (JSON nested too deeply or a number Python will not convert included), a line that is not a JSON
object, missing keys, keys of two formats in one row, a non-string value, a string that is not valid
Unicode (a lone ``\\udXXX`` surrogate escape, which no tokenizer can encode), and a blank line followed by
more rows. Blank lines at the end of the file are fine; a file with no rows raises
``ValueError("<path>: no rows ...")``. A missing file raises ``FileNotFoundError``; one that cannot be
read (a directory, no permission) ``ValueError("<path>: cannot read ...")``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator, Optional

__all__ = ["Row", "FORMATS", "read_jsonl_rows", "parse_row"]

# format name -> (prompt key or None, answer key)
FORMATS: dict[str, tuple[Optional[str], str]] = {
    "input_output": ("input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": (None, "text"),
}
_FORMAT_KEYS = {name: {k for k in keys if k is not None} for name, keys in FORMATS.items()}
_ALL_KEYS = set().union(*_FORMAT_KEYS.values())
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Row:
    """One example. ``prompt`` gets no loss, ``answer`` does; ``line`` is the 1-based source line."""

    prompt: str
    answer: str
    format: str
    line: int


def parse_row(obj: object, where: str, line: int) -> Row:
    """Validate one decoded JSON value and detect its format. ``where`` prefixes error messages."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    present = _ALL_KEYS & obj.keys()
    matches = [name for name, keys in _FORMAT_KEYS.items() if present & keys]
    if not matches:
        raise ValueError(
            f"{where}: no known keys; expected {{'input','output'}}, {{'prompt','completion'}} or {{'text'}}, "
            f"got keys {sorted(obj.keys())}"
        )
    if len(matches) > 1:
        raise ValueError(f"{where}: row mixes keys of several formats: {sorted(present)}")
    fmt = matches[0]
    missing = _FORMAT_KEYS[fmt] - obj.keys()
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)} for format {fmt} (got {sorted(present)})")
    for key in sorted(_FORMAT_KEYS[fmt]):
        if not isinstance(obj[key], str):
            raise ValueError(f"{where}: value of {key!r} must be a string, got {type(obj[key]).__name__}")
        surrogate = _SURROGATE.search(obj[key])
        if surrogate:
            raise ValueError(f"{where}: value of {key!r} is not valid Unicode: lone surrogate "
                             f"\\u{ord(surrogate.group()):04x} at character {surrogate.start()}")
    prompt_key, answer_key = FORMATS[fmt]
    return Row(prompt=obj[prompt_key] if prompt_key else "", answer=obj[answer_key], format=fmt, line=line)


def _decode_json(text: str, where: str) -> object:
    """``json.loads(text)``, every failure turned into ``ValueError("<where>: ...")``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ValueError(f"{where}: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # valid JSON Python refuses, e.g. an integer of more than 4300 digits
        raise ValueError(f"{where}: unsupported JSON value: {exc}") from None


def _raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, raw bytes)`` of a file; an unreadable file is a ``ValueError`` (missing:
    ``FileNotFoundError``)."""
    try:
        with open(path, "rb") as f:
            yield from enumerate(f, start=1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _decode_line(raw: bytes, lineno: int) -> tuple[Optional[str], Optional[str]]:
    """``(text, None)`` for valid UTF-8 (a leading BOM dropped on line 1), else ``(None, why)``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8: {exc}"
    return (text.lstrip("\ufeff") if lineno == 1 else text), None


def read_jsonl_rows(path: str) -> list[Row]:
    """All rows of a jsonl file, in file order. See the module docstring for formats and errors.

    The error names the first problem in file order (a blank line counts as one once a row follows it).
    """
    path = str(path)
    rows: list[Row] = []
    blank_line: Optional[int] = None  # first blank line seen since the last row
    for lineno, raw in _raw_lines(path):
        where = f"{path}:{lineno}"
        text, invalid = _decode_line(raw, lineno)
        if text is not None and not text.strip():
            if blank_line is None:
                blank_line = lineno
            continue
        if blank_line is not None:
            raise ValueError(f"{path}:{blank_line}: empty line in the middle of the file")
        if invalid is not None:
            raise ValueError(f"{where}: {invalid}")
        rows.append(parse_row(_decode_json(text, where), where, lineno))
    if not rows:
        raise ValueError(f"{path}: no rows (the file is empty or blank)")
    return rows
