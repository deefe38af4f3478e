"""A Megatron-Bridge recipe with its objective switched to MFT: compose, then run Bridge's ``finetune()``.

    config, mft = compose("megatron.bridge.recipes.llama.llama3:llama32_1b_sft_config",
                          config_file="conf/bridge/llama32_1b_mft.yaml", overrides=["mft.tau=0.1", "train.train_iters=50"])
    run(config, mft)        # finetune(config, prepare(config, mft)): apply_mft, then Bridge's finetune()

Composition, in order:

1. The recipe: a Bridge recipe function (the object, or its dotted name ``module:function``; e.g.
   ``megatron.bridge.recipes.llama.llama3:llama32_1b_sft_config`` or ``...:llama32_1b_peft_config``,
   ``megatron.bridge.recipes.qwen.qwen3:qwen3_8b_sft_config``), called with ``recipe_kwargs``. A YAML file may name
   it too: a top-level ``recipe:`` section ``{function: module:function, kwargs: {...}}`` (``--recipe`` and
   ``recipe_kwargs`` win). Its ``ConfigContainer`` is the base.
2. The YAML file and the Hydra-style overrides (``key=value``, ``+key=value``, ``~key``), applied with Bridge's own
   utilities (`megatron.bridge.training.utils.omegaconf_utils`: ``create_omegaconf_dict_config``, OmegaConf merge
   of the file, ``parse_hydra_overrides``, ``apply_overrides``), exactly as Bridge's
   ``process_config_with_overrides`` does, with two additions:

   - an ``mft:`` section (`nemo_mft.config.schema.MFTSection`: method, tau, temperature, impl, kd_ce_alpha,
     inplace_grad, l2_init_weight), typed: unknown keys and values of the wrong type are errors;
   - a key that is not a field of Bridge's configuration (Bridge would log a warning and skip it) is an error.
     Free-form dictionaries of Bridge's configuration (``dataset.dataset_kwargs``, ...) and ``_target_`` nodes
     (instantiated by Bridge) take any key.

Errors in what the user asked for are :class:`RecipeError` (a ValueError) with one clear message.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from nemo_mft.config.schema import MFTSection

__all__ = ["RecipeError", "RECIPE_EXAMPLES", "resolve_recipe", "compose", "prepare", "run"]

# Real recipe functions of Megatron-Bridge 0.3.1 (megatron/bridge/recipes), for help texts.
RECIPE_EXAMPLES = (
    "megatron.bridge.recipes.llama.llama3:llama32_1b_sft_config",
    "megatron.bridge.recipes.llama.llama3:llama32_1b_peft_config",
    "megatron.bridge.recipes.llama.llama3:llama31_8b_sft_config",
    "megatron.bridge.recipes.qwen.qwen3:qwen3_8b_sft_config",
    "megatron.bridge.recipes.qwen.qwen2:qwen25_7b_peft_config",
)
MFT_KEY = "mft"
RECIPE_KEY = "recipe"


class RecipeError(ValueError):
    """A recipe, file, key or value the user gave that cannot be used; the message says which and why."""


def resolve_recipe(recipe: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The recipe function: ``recipe`` itself when callable, else imported from ``module:function`` (or
    ``module.function``). RecipeError when the module or function does not exist or is not callable."""
    if callable(recipe):
        return recipe
    if not isinstance(recipe, str) or not recipe.strip():
        raise RecipeError(f"a recipe is a function or its name module:function, got {recipe!r}")
    name = recipe.strip()
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attr:
        raise RecipeError(f"recipe {name!r}: expected module:function, e.g. {RECIPE_EXAMPLES[0]}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise RecipeError(f"recipe {name!r}: no module {err.name!r}") from None
        raise
    function = getattr(module, attr, None)
    if function is None:
        raise RecipeError(f"recipe {name!r}: module {module_name} has no {attr!r}")
    if isinstance(function, type) or not callable(function):
        raise RecipeError(f"recipe {name!r}: {attr} is a {type(function).__name__}, not a function")
    return function


def _load_yaml(config_file: Optional[Union[str, Path]]):
    """The YAML file as a DictConfig (empty without a file); RecipeError if missing or not a mapping."""
    from omegaconf import DictConfig, OmegaConf

    if config_file is None:
        return OmegaConf.create({})
    path = Path(config_file)
    if not path.is_file():
        raise RecipeError(f"config file {path} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml's and OmegaConf's parse errors have no common base class
        raise RecipeError(f"config file {path}: not valid YAML ({err})") from None
    if not isinstance(loaded, DictConfig):
        raise RecipeError(f"config file {path}: the top level must be a mapping of sections")
    return loaded


def _override_key(override: str) -> str:
    """The dotted key of a Hydra override (``++a.b=1`` -> ``a.b``, ``~a.b`` -> ``a.b``)."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def _recipe_section(yaml_conf, overrides: Sequence[str]) -> tuple[Optional[str], dict]:
    """(function, kwargs) of the YAML's ``recipe:`` section after the ``recipe.*`` overrides."""
    from megatron.bridge.training.utils.omegaconf_utils import OverridesError, parse_hydra_overrides
    from omegaconf import OmegaConf

    section = OmegaConf.create({RECIPE_KEY: {"function": None, "kwargs": {}}})
    if RECIPE_KEY in yaml_conf:
        given = yaml_conf[RECIPE_KEY]
        if not OmegaConf.is_dict(given) or set(given) - {"function", "kwargs"}:
            raise RecipeError("the recipe: section takes function (module:function) and kwargs (a mapping)")
        section = OmegaConf.merge(section, {RECIPE_KEY: given})
    mine = [o for o in overrides if _override_key(o).split(".")[0] == RECIPE_KEY]
    if mine:
        try:
            section = parse_hydra_overrides(section, mine)
        except OverridesError as err:
            raise RecipeError(_override_message(err)) from None
    values = OmegaConf.to_container(section[RECIPE_KEY], resolve=True)
    kwargs = values["kwargs"] or {}
    if not isinstance(kwargs, dict):
        raise RecipeError("recipe.kwargs must be a mapping of the recipe function's arguments")
    return values["function"], {key: _instantiated(f"recipe.kwargs.{key}", value) for key, value in kwargs.items()}


def _instantiated(key: str, value: Any) -> Any:
    """A ``{_target_: class, ...}`` mapping built with Bridge's ``instantiate`` (e.g. a LoRA for a recipe's
    ``peft_scheme``); any other value as it is."""
    if not (isinstance(value, dict) and "_target_" in value):
        return value
    from megatron.bridge.utils.instantiate_utils import instantiate

    try:
        return instantiate(value)
    except Exception as err:  # instantiate wraps import and argument errors in several types
        raise RecipeError(f"{key}: cannot build {value['_target_']}: {' '.join(str(err).split())}") from None


def _dotted_leaves(values: Any, prefix: str = "") -> list[str]:
    if not isinstance(values, Mapping) or not values:
        return [prefix.rstrip(".")] if prefix else []
    return [leaf for key, value in values.items() for leaf in _dotted_leaves(value, f"{prefix}{key}.")]


def _check_not_excluded(keys: Sequence[str], excluded: Mapping[str, Any], source: str) -> None:
    """RecipeError for a key inside an object that Bridge's OmegaConf conversion leaves out (``peft``, functions):
    Bridge would put the recipe's object back over whatever the file or override set."""
    roots = [path.removeprefix("root.") for path in excluded]
    for key in keys:
        for root in roots:
            if key == root or key.startswith(root + ".") or root.startswith(key + "."):
                hint = (" (choose the PEFT scheme through the recipe function's arguments, e.g. "
                        "recipe.kwargs.peft_scheme=lora, or {_target_: megatron.bridge.peft.lora.LoRA, dim: 16} "
                        "in the file)" if root.split(".")[0] == "peft" else "")
                raise RecipeError(f"{source} sets {key}, which Megatron-Bridge's overrides cannot change: {root} "
                                  f"is an object, not a configuration value{hint}")


def _mft_node():
    """The ``mft`` section's typed node: MFTSection's fields and defaults (a struct: no other keys)."""
    from omegaconf import OmegaConf

    defaults = {f.name: getattr(MFTSection(), f.name) for f in dataclasses.fields(MFTSection)}
    node = OmegaConf.structured(MFTSection(**defaults))
    OmegaConf.set_struct(node, True)
    return node


def _unknown_keys(obj: Any, values: Mapping[str, Any], path: str) -> list[str]:
    """Dotted keys of ``values`` that are not fields of the dataclass ``obj`` (recursively). A key under a
    non-dataclass value (a free-form dict, None) or a ``_target_`` node is not checked."""
    if not dataclasses.is_dataclass(obj) or "_target_" in values:
        return []
    unknown = []
    for key, value in values.items():
        if not hasattr(obj, key):
            unknown.append(f"{path}{key}")
        elif isinstance(value, Mapping):
            unknown += _unknown_keys(getattr(obj, key), value, f"{path}{key}.")
    return unknown


def _mft_section(values: Mapping[str, Any]) -> MFTSection:
    try:
        return MFTSection(**values)
    except (TypeError, ValueError) as err:
        raise RecipeError(str(err)) from None


def compose(recipe: Union[str, Callable[..., Any], None] = None, config_file: Optional[Union[str, Path]] = None,
            overrides: Sequence[str] = (), recipe_kwargs: Optional[Mapping[str, Any]] = None):
    """(Bridge ``ConfigContainer``, `MFTSection`): the recipe with the file and the overrides applied (see the
    module docstring). ``recipe`` may be None when the file's ``recipe.function`` names it. Raises RecipeError."""
    from megatron.bridge.training.utils.omegaconf_utils import (
        OverridesError,
        apply_overrides,
        create_omegaconf_dict_config,
        parse_hydra_overrides,
    )
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = [str(o) for o in overrides]
    yaml_conf = _load_yaml(config_file)
    function_name, kwargs = _recipe_section(yaml_conf, overrides)
    recipe = recipe if recipe is not None else function_name
    if recipe is None:
        raise RecipeError("no recipe: pass one (--recipe module:function) or set recipe.function in the config "
                          f"file; e.g. {RECIPE_EXAMPLES[0]}")
    function = resolve_recipe(recipe)
    kwargs.update(recipe_kwargs or {})
    try:
        config = function(**kwargs)
    except TypeError as err:
        if kwargs and "argument" in str(err):
            raise RecipeError(f"recipe {getattr(function, '__name__', function)}: {err}") from None
        raise
    if not dataclasses.is_dataclass(config) or not hasattr(config, "model"):
        raise RecipeError(f"recipe {getattr(function, '__name__', function)} returned a {type(config).__name__}, "
                          "not a Megatron-Bridge ConfigContainer")

    # Bridge's process_config_with_overrides, with the typed mft node added before the file and overrides.
    conf, excluded = create_omegaconf_dict_config(config)
    conf[MFT_KEY] = _mft_node()
    file_sections = OmegaConf.masked_copy(yaml_conf, [k for k in yaml_conf if k != RECIPE_KEY])
    others = [o for o in overrides if _override_key(o).split(".")[0] != RECIPE_KEY]
    _check_not_excluded(_dotted_leaves(OmegaConf.to_container(file_sections)), excluded, f"config file {config_file}")
    _check_not_excluded([_override_key(o) for o in others], excluded, "an override")
    try:
        conf = OmegaConf.merge(conf, file_sections)
    except OmegaConfBaseException as err:
        raise RecipeError(f"config file {config_file}: {str(err).splitlines()[0]} ({_where(err)})") from None
    if others:
        try:
            conf = parse_hydra_overrides(conf, others)
        except OverridesError as err:
            raise RecipeError(_override_message(err)) from None
    values = OmegaConf.to_container(conf, resolve=True)
    mft = _mft_section(values.pop(MFT_KEY))
    unknown = _unknown_keys(config, values, "")
    if unknown:
        raise RecipeError(f"not a key of the Megatron-Bridge configuration of this recipe: {', '.join(unknown)}")
    apply_overrides(config, values, excluded)
    return config, mft


def _override_message(err: Exception) -> str:
    """Bridge's OverridesError with the reason it wraps (OmegaConf's first line), on one line."""
    message = " ".join(str(err).split())
    cause = err.__cause__
    while cause is not None and cause.__cause__ is not None and not str(cause).strip():
        cause = cause.__cause__
    reason = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if cause is not None and cause.__cause__ is not None and str(cause.__cause__).strip():
        reason = str(cause.__cause__).strip().splitlines()[0]
    return f"{message}: {reason}" if reason and reason not in message else message


def _where(err) -> str:
    key = getattr(err, "full_key", None)
    return f"key {key}" if key else type(err).__name__


def prepare(config, mft: MFTSection) -> Callable[..., Any]:
    """Switch ``config``'s objective to ``mft`` in place (`nemo_mft.bridge.apply_mft`: teacher, loss
    normalization); returns the forward step for Bridge's ``finetune(config, forward_step)``. ValueError for a
    combination MFT does not support (apply_mft's checks)."""
    from nemo_mft.bridge import apply_mft, mft_forward_step

    apply_mft(config, mft)
    return mft_forward_step(config, mft)


def run(config, mft: MFTSection, finetune: Optional[Callable[..., Any]] = None) -> None:
    """`prepare`, then train with Bridge's ``finetune(config, forward_step)`` (or the given ``finetune``)."""
    if finetune is None:
        from megatron.bridge.training.finetune import finetune
    finetune(config, prepare(config, mft))
