"""Reading jsonl training / evaluation files into (prompt, answer) or chat rows, with file:line errors.

One JSON object per line, in one of four formats, detected per row (a file may mix rows of
different formats, but a single row may not mix keys of two formats):

=========================  ==================  =====================================
keys                       prompt              answer (the part that gets loss)
=========================  ==================  =====================================
``{"input", "output"}``    ``input``           ``output``   (NeMo / Megatron-Bridge SFT)
``{"prompt", "completion"}`` ``prompt``        ``completion`` (NeMo Customizer)
``{"text"}``               ``""``              ``text``     (loss on every token)
``{"messages"}``           (chat, see below)   every assistant turn
=========================  ==================  =====================================

Other keys (``"id"``, ``"category"``, ...) are ignored. Prompt and answer are used as given: any
separator or template belongs in the data.

Chat rows: ``"messages"`` is a non-empty list of ``{"role": ..., "content": ...}`` objects, ``role`` one of
``system``, ``user``, ``assistant`` and ``content`` a string, with at least one ``assistant`` message (other
keys of a message are ignored). They become ``Row.messages`` as ``(role, content)`` pairs, with empty
``prompt`` / ``answer``; the model's chat template renders them later (:mod:`nemo_mft.data.samples`).

Every problem raises ``ValueError("<path>:<line>: <what>")`` (1-based line numbers): invalid JSON or
UTF-8 (JSON nested too deeply or a number Python will not convert included), a line that is not a JSON
object, missing keys, keys of two formats in one row, a non-string value, a string that is not valid
Unicode (a lone ``\\udXXX`` surrogate escape, which no tokenizer can encode), and a blank line followed by
more rows; for chat rows also a ``messages`` that is not a non-empty list, a message that is not an
object, a missing ``role`` / ``content``, an unknown role, a non-string content, and no assistant message.
Blank lines at the end of the file are fine; a file with no rows raises
``ValueError("<path>: no rows ...")``. A missing file raises ``FileNotFoundError``; one that cannot be
read (a directory, no permission) ``ValueError("<path>: cannot read ...")``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator, Optional

__all__ = ["Row", "FORMATS", "CHAT_ROLES", "read_jsonl_rows", "parse_row"]

# format name -> (prompt key or None, answer key)
FORMATS: dict[str, tuple[Optional[str], str]] = {
    "input_output": ("input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": (None, "text"),
    "chat": (None, "messages"),
}
CHAT_ROLES = ("system", "user", "assistant")
_FORMAT_KEYS = {name: {k for k in keys if k is not None} for name, keys in FORMATS.items()}
_ALL_KEYS = set().union(*_FORMAT_KEYS.values())
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Row:
    """One example. ``prompt`` gets no loss, ``answer`` does; ``line`` is the 1-based source line.

    ``messages``: the ``(role, content)`` pairs of a chat row (``format == "chat"``, empty prompt and answer);
    ``()`` for the other formats.
    """

    prompt: str
    answer: str
    format: str
    line: int
    messages: tuple[tuple[str, str], ...] = ()


def _check_unicode(value: str, what: str, where: str) -> None:
    """A ``ValueError`` when ``value`` holds a lone surrogate (no tokenizer can encode it)."""
    surrogate = _SURROGATE.search(value)
    if surrogate:
        raise ValueError(f"{where}: {what} is not valid Unicode: lone surrogate "
                         f"\\u{ord(surrogate.group()):04x} at character {surrogate.start()}")


def _parse_message(message: object, index: int, where: str) -> tuple[str, str]:
    """One chat message -> ``(role, content)``; ``index`` is its 0-based position, for the error."""
    what = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ValueError(f"{where}: {what} must be an object with 'role' and 'content', got {type(message).__name__}")
    missing = [key for key in ("role", "content") if key not in message]
    if missing:
        raise ValueError(f"{where}: {what} is missing key(s) {missing} (got {sorted(message.keys())})")
    role, content = message["role"], message["content"]
    if not isinstance(role, str) or role not in CHAT_ROLES:
        raise ValueError(f"{where}: {what} has unknown role {role!r}; expected one of {list(CHAT_ROLES)}")
    if not isinstance(content, str):
        raise ValueError(f"{where}: {what} content must be a string, got {type(content).__name__}")
    _check_unicode(content, f"{what} content", where)
    return role, content


def _parse_messages(value: object, where: str) -> tuple[tuple[str, str], ...]:
    """The ``"messages"`` value of a chat row -> ``(role, content)`` pairs, with at least one assistant turn."""
    if not isinstance(value, list) or not value:
        shown = "an empty list" if value == [] else type(value).__name__
        raise ValueError(f"{where}: value of 'messages' must be a non-empty list of messages, got {shown}")
    messages = tuple(_parse_message(message, index, where) for index, message in enumerate(value))
    if not any(role == "assistant" for role, _ in messages):
        raise ValueError(f"{where}: chat row has no assistant message, so nothing to train on "
                         f"(roles {[role for role, _ in messages]})")
    return messages


def parse_row(obj: object, where: str, line: int) -> Row:
    """Validate one decoded JSON value and detect its format. ``where`` prefixes error messages."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    present = _ALL_KEYS & obj.keys()
    matches = [name for name, keys in _FORMAT_KEYS.items() if present & keys]
    if not matches:
        raise ValueError(
            f"{where}: no known keys; expected {{'input','output'}}, {{'prompt','completion'}}, {{'text'}} or "
            f"{{'messages'}}, "
            f"got keys {sorted(obj.keys())}"
        )
    if len(matches) > 1:
        raise ValueError(f"{where}: row mixes keys of several formats: {sorted(present)}")
    fmt = matches[0]
    missing = _FORMAT_KEYS[fmt] - obj.keys()
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)} for format {fmt} (got {sorted(present)})")
    if fmt == "chat":
        return Row(prompt="", answer="", format=fmt, line=line, messages=_parse_messages(obj["messages"], where))
    for key in sorted(_FORMAT_KEYS[fmt]):
        if not isinstance(obj[key], str):
            raise ValueError(f"{where}: value of {key!r} must be a string, got {type(obj[key]).__name__}")
        _check_unicode(obj[key], f"value of {key!r}", where)
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
