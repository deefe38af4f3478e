"""A run's recipe from the command line: the recipe directory, the overrides, Hydra's compose API.

A run composes its recipe here, with Hydra's compose API, rather than inside ``@hydra.main``. Hydra's
application wrapper catches every exception raised while composing or running, prints its own text
("Set the environment variable HYDRA_FULL_ERROR=1 ...") and exits with status 1, so a misspelled key
and a bug in the training loop would look alike. Composing here keeps each failure where it can be told
apart: everything below raises :class:`~nemo_mft.finetune.errors.UsageError` (one line, exit status 2)
for what the user asked for, and any other exception is a bug. The composition is Hydra's own (the same
config loader, defaults lists and override grammar); only Hydra's job machinery (run directory, logging
set-up, ``${hydra:...}`` interpolations), which the command switched off anyway, is not involved.

Every override is parsed first, one at a time, so that a syntax error names its override; a dotted key
(``a.b=v``, ``+a.b=v``, ``++a.b=v``, ``~a.b``) must be a key of the schema, and ``~key`` may not delete
one. After composing, `nemo_mft.config.checks.check_keys` holds the whole config, recipe files
included, against the schema (`nemo_mft.config.check_structure`).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from nemo_mft.config.checks import (closest_key, omegaconf_error_text, schema_keys, unknown_key_message,
                                    without_details)
from nemo_mft.finetune.errors import DEBUG_ENV, UsageError, one_line

GRAMMAR_HINT = "overrides are key=value, +key=value, ++key=value or ~key"


@dataclass(frozen=True)
class ConfigSource:
    """Where recipes are read from: a directory (absolute path) or a Python package (``pkg://a.b``)."""

    directory: Optional[str] = None
    module: Optional[str] = None

    def describe(self) -> str:
        return self.directory if self.directory is not None else f"pkg://{self.module}"


def list_recipes(config_dir: Optional[str]) -> list[str]:
    """The recipe names (``*.yaml`` files, without the suffix) of the directory ``config_dir``."""
    if not config_dir or not os.path.isdir(config_dir):
        return []
    return sorted(name[:-5] for name in os.listdir(config_dir) if name.endswith(".yaml"))


def config_source(path: str, cwd: str) -> ConfigSource:
    """The recipes a ``--config-path`` value designates: a directory (relative to ``cwd``), ``file://DIR``
    or ``pkg://PACKAGE``; raises UsageError when the directory does not exist."""
    if path.startswith("pkg://"):
        return ConfigSource(module=path[len("pkg://"):])
    if path.startswith("file://"):
        path = path[len("file://"):]
    elif "://" in path:
        raise UsageError(f"--config-path {path}: only a directory, file://DIR or pkg://PACKAGE is supported")
    directory = os.path.normpath(os.path.join(cwd, path))
    if not os.path.isdir(directory):
        raise UsageError(f"--config-path {path}: no such directory ({directory})")
    return ConfigSource(directory=directory)


def check_recipe_name(source: ConfigSource, name: str) -> None:
    """Raise UsageError when the recipe directory has no ``name`` (with the closest recipe name)."""
    if source.directory is None:
        return  # a package: Hydra's loader reports a missing recipe
    file_name = name if name.endswith(".yaml") else f"{name}.yaml"
    if os.path.isfile(os.path.join(source.directory, file_name)):
        return
    recipes = list_recipes(source.directory)
    match = closest_key(name.removesuffix(".yaml"), recipes)
    hint = f"did you mean {match}? " if match else ""
    raise UsageError(f"--config-name {name}: no such recipe in {source.directory}; {hint}"
                     f"(recipes: {', '.join(recipes) or 'none'})")


def parse_override(text: str):
    """Hydra's parse of one override; raises UsageError naming it when it does not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(text)
    except HydraException as err:
        raise UsageError(f"cannot parse override {text!r}: {one_line(str(err))} ({GRAMMAR_HINT})") from err


def _is_hydra_or_group(key: str, package: Optional[str]) -> bool:
    """Whether an override addresses Hydra's own config or a config group (not a recipe key)."""
    return key == "hydra" or key.startswith(("hydra.", "hydra/")) or "/" in key or package is not None


def check_override_key(text: str, override, keys: Sequence[str]) -> None:
    """Raise UsageError when ``override`` (parsed from ``text``) names an unknown key, or deletes a key of
    the schema. Config groups, Hydra's keys and undotted names that are no section (a group, perhaps)
    are left to the composition."""
    key = override.key_or_group
    if not key:
        raise UsageError(f"override {text!r} names no key ({GRAMMAR_HINT})")
    if _is_hydra_or_group(key, override.package):
        return
    sections = {k for k in keys if "." not in k}
    if "." not in key and key not in sections:
        return
    if key not in keys:
        raise UsageError(unknown_key_message(key, keys))
    if override.is_delete():
        children = [k for k in keys if k.startswith(f"{key}.")]
        instead = f"set its keys instead ({children[0]}=...)" if children else f"set a value instead ({key}=...)"
        raise UsageError(f"~{key}: {key} is part of the recipe schema and cannot be deleted; {instead}")


def check_overrides(overrides: Sequence[str], keys: Sequence[str]) -> None:
    """Parse every override and check the keys it names (see :func:`check_override_key`)."""
    for text in overrides:
        check_override_key(text, parse_override(text), keys)


def _find_cause(err: BaseException, kinds: tuple) -> Optional[BaseException]:
    """The first exception of ``kinds`` in the chain of ``err`` (itself included)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kinds):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _hydra_text(err: BaseException) -> str:
    """Hydra's message on one line, without OmegaConf's detail lines and the config search path it lists
    after a missing config."""
    return without_details(str(err).split("Config search path:", 1)[0])


def composition_error_message(err: BaseException, keys: Sequence[str], config_name: str) -> str:
    """One line for an exception raised by Hydra while composing ``config_name`` (an unknown key names the
    closest valid one)."""
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from nemo_mft.config import SCHEMA_NAME

    if not isinstance(err, (HydraException, OmegaConfBaseException)):
        return (f"recipe {config_name} cannot be composed: {type(err).__name__} in Hydra: {one_line(str(err))} "
                f"({DEBUG_ENV}=1 shows where)")
    key_error = _find_cause(err, (ConfigKeyError, ConfigAttributeError))
    full_key = getattr(key_error, "full_key", None)
    if full_key and full_key not in keys:
        where = re.match(r"In '([^']+)':", str(err))
        return (f"recipe {where.group(1)}: " if where else "") + unknown_key_message(full_key, keys)
    if full_key:  # a key of the schema that the composed config lacks: the recipe is not merged onto it
        return f"the recipe has no {full_key}: a recipe must start with `defaults: [{SCHEMA_NAME}, _self_]`"
    text = _hydra_text(err) if not isinstance(err, OmegaConfBaseException) else omegaconf_error_text(err)
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        detail = omegaconf_error_text(cause)
        if detail not in text:
            text = f"{text}: {detail}"
    return text or type(err).__name__


@contextmanager
def hydra_initialized(source: ConfigSource) -> Iterator[None]:
    """Hydra's compose API pointed at ``source`` for the duration of the block."""
    from hydra import initialize_config_dir, initialize_config_module

    if source.directory is not None:
        context = initialize_config_dir(config_dir=source.directory, version_base=None)
    else:
        context = initialize_config_module(config_module=source.module, version_base=None)
    with context:
        yield


def compose_checked(source: ConfigSource, config_name: str, overrides: Sequence[str]):
    """The composed recipe (a DictConfig, values not yet validated) or UsageError: the recipe exists,
    every override parses and names a key of the schema, composition succeeds, no key is unknown.

    Whatever Hydra's ``compose`` raises is a UsageError. It runs only Hydra's config loader on the user's
    recipe files and overrides (the schema is plain dataclasses, composed by every test), and for some
    malformed recipes it raises plain Python errors rather than its own: ``hydra: null`` an
    AttributeError, ``defaults: 3`` a ValueError, a file holding a bare number an OSError.
    """
    import yaml
    from hydra import compose

    from nemo_mft.config import check_structure, register_schema

    keys = schema_keys()
    check_recipe_name(source, config_name)
    check_overrides(overrides, keys)
    register_schema()
    try:
        with hydra_initialized(source):
            cfg = compose(config_name, overrides=list(overrides))
    except yaml.YAMLError as err:
        raise UsageError(f"recipe {config_name}: not valid YAML: {one_line(str(err))}") from err
    except Exception as err:  # only Hydra's loader ran, on the user's files and overrides: see the docstring
        raise UsageError(composition_error_message(err, keys, config_name)) from err
    try:
        check_structure(cfg)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return cfg


def load_recipe(source: ConfigSource, config_name: str, overrides: Sequence[str]):
    """``(config, resolved_yaml)``: the validated recipe (a FinetuneConfig) and its resolved YAML text, or
    UsageError."""
    from omegaconf import OmegaConf

    from nemo_mft.config import validate_config

    cfg = compose_checked(source, config_name, overrides)
    try:
        config = validate_config(cfg)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return config, OmegaConf.to_yaml(cfg, resolve=True)


__all__ = ["ConfigSource", "list_recipes", "config_source", "check_recipe_name", "parse_override",
           "check_override_key", "check_overrides", "composition_error_message", "hydra_initialized",
           "compose_checked", "load_recipe"]
