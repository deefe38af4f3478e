"""Key checks of a composed recipe against the schema, and short texts for OmegaConf's errors.

Hydra rejects an unknown key in a recipe file or in a plain ``key=value`` override, but ``+key=value`` and
``++key=value`` add keys to the structured config on purpose. :func:`check_keys` looks at the composed
config itself, so every key, however it got there, is held against the schema's dotted keys
(:func:`schema_keys`); a key that is not one of them is named with the closest valid one
(:func:`unknown_key_message`), and a section or key that a ``~key`` override removed is named too.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import lru_cache
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from nemo_mft.config.schema import FinetuneConfig

# Lines OmegaConf appends to its messages (full_key, reference_type, object_type): details, not the error.
_DETAIL_PREFIXES = ("full_key:", "reference_type=", "object_type=")


@lru_cache(maxsize=None)
def schema_keys(schema: type = FinetuneConfig) -> tuple[str, ...]:
    """Every dotted key of the dataclass ``schema``, in field order: sections (``mft``) and fields (``mft.tau``)."""
    keys: list[str] = []
    for field in dataclasses.fields(schema):
        keys.append(field.name)
        section = field.default_factory if field.default_factory is not dataclasses.MISSING else None
        if isinstance(section, type) and dataclasses.is_dataclass(section):
            keys.extend(f"{field.name}.{key}" for key in schema_keys(section))
    return tuple(keys)


def closest_key(key: str, keys: Sequence[str]) -> Optional[str]:
    """The valid key most like ``key`` (difflib), or None when none is close."""
    matches = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(key: str, keys: Sequence[str] = schema_keys()) -> str:
    """``unknown key mft.tua; did you mean mft.tau?``; without a close match, the keys of its section."""
    match = closest_key(key, keys)
    if match is not None:
        return f"unknown key {key}; did you mean {match}?"
    section, _, _ = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
    where = f"{section} has" if section in keys else "the sections are"
    if not siblings:
        return f"unknown key {key}"
    return f"unknown key {key} ({where}: {', '.join(siblings)})"


def _children(keys: Sequence[str], prefix: str) -> list[str]:
    """The dotted keys one level below ``prefix`` ('' for the top level)."""
    depth = prefix.count(".") + 1 if prefix else 0
    start = f"{prefix}." if prefix else ""
    return [k for k in keys if k.startswith(start) and k.count(".") == depth]


def first_unknown_key(tree: Mapping[str, Any], keys: Sequence[str], prefix: str = "") -> Optional[str]:
    """The first dotted key of the plain mapping ``tree`` that is not one of ``keys``, or None."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if key not in keys:
            return key
        if isinstance(value, Mapping):
            found = first_unknown_key(value, keys, prefix=f"{key}.")
            if found is not None:
                return found
    return None


def first_missing_key(tree: Mapping[str, Any], keys: Sequence[str], prefix: str = "") -> Optional[str]:
    """The first key of ``keys`` absent from the plain mapping ``tree`` (below sections it holds), or None."""
    for key in _children(keys, prefix.rstrip(".")):
        name = key.rpartition(".")[2]
        if name not in tree:
            return key
        value = tree[name]
        if isinstance(value, Mapping):
            found = first_missing_key(value, keys, prefix=f"{key}.")
            if found is not None:
                return found
    return None


def check_keys(cfg: DictConfig, keys: Sequence[str] = schema_keys()) -> None:
    """Raise ValueError naming the first key of ``cfg`` outside the schema, or the first schema key it lacks.

    Interpolations are not resolved here (values are checked by the schema's dataclasses).
    """
    tree = OmegaConf.to_container(cfg, resolve=False)
    unknown = first_unknown_key(tree, keys)
    if unknown is not None:
        raise ValueError(unknown_key_message(unknown, keys))
    missing = first_missing_key(tree, keys)
    if missing is not None:
        raise ValueError(f"the recipe has no {missing}: every section and key of the schema is required "
                         f"(was it deleted with ~{missing}? set a value instead)")


def without_details(text: str) -> str:
    """``text`` on one line, without the detail lines OmegaConf appends (full_key, reference_type, ...)."""
    lines = [line.strip() for line in text.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(_DETAIL_PREFIXES))


def omegaconf_error_text(err: BaseException) -> str:
    """OmegaConf's message without its detail lines, on one line, with the key it concerns."""
    text = without_details(str(err))
    full_key = getattr(err, "full_key", None)
    if full_key and full_key not in text:
        text = f"{text} (at {full_key})"
    return text or type(err).__name__


__all__ = ["schema_keys", "closest_key", "unknown_key_message", "first_unknown_key",
           "first_missing_key", "check_keys", "without_details", "omegaconf_error_text"]
