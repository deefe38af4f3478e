"""Command line: ``nemo-mft finetune`` / ``python -m nemo_mft.finetune``, ``nemo-mft bridge`` (a Megatron-Bridge
recipe with the MFT objective, `nemo_mft.finetune.bridge_command`), ``nemo-mft import`` (a Hugging Face
model -> a weights-only checkpoint, `nemo_mft.finetune.import_command`) and ``nemo-mft export`` (a checkpoint ->
a Hugging Face model directory, `nemo_mft.finetune.export_command`).

    nemo-mft finetune --config-name mft_tiny dataset.dataset_root=/data mft.tau=0.1 ++train.train_iters=50
    torchrun --nproc_per_node=8 -m nemo_mft.finetune --config-name mft_llama3_8b dataset.dataset_root=/data

Everything after ``finetune`` is a Hydra command line: ``--config-path`` (default: ``$NEMO_MFT_CONFIG_DIR``,
else the recipes of ``conf/``, which ship with the package; a relative path is taken from the current
directory), ``--config-name`` (required: a recipe), dotted overrides with Hydra's ``key=v`` / ``+key=v`` /
``++key=v`` / ``~key`` grammar, and Hydra's information options (``--cfg job`` prints the composed recipe,
``--info``, ``--help``).

A run composes and validates its recipe with `nemo_mft.finetune.recipe` (Hydra's compose API; that
module's docstring says why not ``@hydra.main``) and then runs it. Every key is checked against the schema,
whichever form of override or recipe file brought it. The information options are Hydra's application's,
after the same composition checks; Hydra's own run directory, chdir and logging set-up are switched off
there (``hydra.run.dir=.``, ``hydra.output_subdir=null``, ``hydra.job.chdir=False``,
``hydra/job_logging=none``, ``hydra/hydra_logging=none``): the run directory is ``logger.log_dir``.

Errors follow `nemo_mft.finetune.errors`: a user error is one line on stderr and exit status 2
(``NEMO_MFT_DEBUG=1`` adds the traceback); a bug keeps its traceback and exits 1.
"""

from __future__ import annotations

import importlib.resources
import os
import shlex
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from nemo_mft.finetune.errors import PROG, UsageError, reported_errors
from nemo_mft.finetune.recipe import ConfigSource, compose_checked, config_source, list_recipes, load_recipe

CONFIG_DIR_ENV = "NEMO_MFT_CONFIG_DIR"
HYDRA_SETTINGS = (
    "hydra.run.dir=.",
    "hydra.output_subdir=null",
    "hydra.job.chdir=False",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
)
# Hydra's information options: with one of them Hydra's application prints and exits, nothing runs.
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
              "--version")
# Options that only modify an information option.
INFO_MODIFIERS = ("--resolve", "--package", "-p")
_VALUE_OPTIONS = ("--config-path", "-cp", "--config-name", "-cn", "--cfg", "-c", "--package", "-p")
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def default_config_dir() -> Optional[str]:
    """``$NEMO_MFT_CONFIG_DIR``, else the recipes that come with this package: ``conf/`` of the source
    checkout it is imported from, else the installed package ``nemo_mft.conf`` (setup.py ships ``conf/``
    under that name, in a wheel and in an editable install); None when there are none.

    The checkout comes first: with a checkout on PYTHONPATH, ``nemo_mft.conf`` is found only through an
    editable install's finder, which may map it to another checkout's ``conf/``."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return os.path.abspath(env)
    root = Path(__file__).resolve().parents[2]
    if (root / "setup.py").is_file() and (root / "conf").is_dir():
        return str(root / "conf")
    try:
        packaged = importlib.resources.files("nemo_mft.conf")
    except ModuleNotFoundError:
        return None
    # A directory of plain files for a wheel or an editable install (not for a zipped import).
    return str(packaged) if isinstance(packaged, Path) and packaged.is_dir() else None


def _option_value(argv: list[str], names: tuple[str, ...]) -> tuple[Optional[int], Optional[str]]:
    """(index, value) of the last ``--name value`` / ``--name=value`` occurrence in argv."""
    found: tuple[Optional[int], Optional[str]] = (None, None)
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                found = (i, argv[i + 1])
            elif arg.startswith(name + "="):
                found = (i, arg[len(name) + 1:])
    return found


def hydra_argv(argv: Sequence[str]) -> list[str]:
    """The user's arguments for Hydra's application, made absolute where Hydra would not take them from
    the cwd, plus :data:`HYDRA_SETTINGS` (each unless the user set that key)."""
    args = list(argv)
    index, value = _option_value(args, ("--config-path", "-cp"))
    if index is not None and value and "://" not in value and not os.path.isabs(value):
        # Hydra resolves a relative --config-path against the *module file*; users mean the cwd.
        absolute = os.path.abspath(value)
        if args[index].startswith(("--config-path=", "-cp=")):
            args[index] = f"{args[index].split('=', 1)[0]}={absolute}"
        else:
            args[index + 1] = absolute
    value_options = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--experimental-rerun", "--info", "-i")
    overrides = [i for i, arg in enumerate(args)
                 if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))
                 and not (i > 0 and args[i - 1] in value_options)]
    user_keys = {args[i].lstrip("+~").split("=", 1)[0] for i in overrides}
    missing = [s for s in HYDRA_SETTINGS if s.split("=", 1)[0] not in user_keys]
    # Hydra's overrides are one run of positional arguments: keep ours next to the user's.
    at = overrides[-1] + 1 if overrides else 0
    args[at:at] = missing
    return args


@dataclass(frozen=True)
class FinetuneArgs:
    """The ``finetune`` command line, read: recipe directory and name, overrides, information mode."""

    config_path: Optional[str] = None
    config_name: Optional[str] = None
    overrides: tuple[str, ...] = ()
    info: bool = False


def _split_option(arg: str) -> tuple[str, Optional[str]]:
    """``--name=value`` -> (``--name``, ``value``); anything else -> (arg, None)."""
    if arg.startswith("-") and "=" in arg:
        name, value = arg.split("=", 1)
        return name, value
    return arg, None


def parse_finetune_args(argv: Sequence[str]) -> FinetuneArgs:
    """Read the command line (UsageError on an option this command does not take or a missing value)."""
    values: dict[str, str] = {}
    overrides: list[str] = []
    info, modifiers = False, []
    i = 0
    while i < len(argv):
        name, value = _split_option(argv[i])
        i += 1
        if not name.startswith("-"):
            overrides.append(argv[i - 1])
            continue
        if name not in (*INFO_FLAGS, *INFO_MODIFIERS, "--config-path", "-cp", "--config-name", "-cn"):
            raise UsageError(f"unknown option {name} (a run takes --config-path, --config-name and overrides; "
                             f"see {PROG} finetune --help)")
        takes_value = name in _VALUE_OPTIONS or (name in ("--info", "-i") and i < len(argv)
                                                 and argv[i] in _INFO_CHOICES)
        if takes_value and value is None:
            if i >= len(argv):
                raise UsageError(f"{name} needs a value")
            value, i = argv[i], i + 1
        info = info or name in INFO_FLAGS
        if name in INFO_MODIFIERS:
            modifiers.append(name)
        long_name = {"-cp": "--config-path", "-cn": "--config-name"}.get(name, name)
        if value is not None:
            values[long_name] = value
    if modifiers and not info:
        raise UsageError(f"{modifiers[0]} goes with --cfg (it changes what --cfg prints)")
    return FinetuneArgs(config_path=values.get("--config-path"), config_name=values.get("--config-name"),
                        overrides=tuple(overrides), info=info)


def recipe_source(config_path: Optional[str], default_dir: Optional[str], cwd: str) -> ConfigSource:
    """The recipes of ``--config-path`` (relative to ``cwd``), else of ``default_dir``."""
    if config_path is not None:
        return config_source(config_path, cwd)
    if default_dir is None:
        raise UsageError(f"no recipe directory found: pass --config-path or set {CONFIG_DIR_ENV}")
    if not os.path.isdir(default_dir):
        raise UsageError(f"the recipe directory {default_dir} (${CONFIG_DIR_ENV}) does not exist")
    return ConfigSource(directory=default_dir)


def require_config_name(args: FinetuneArgs, source: ConfigSource) -> str:
    """``--config-name``, or UsageError listing the recipes of ``source``."""
    if args.config_name is None:
        where = source.describe()
        raise UsageError(f"--config-name is required (recipes in {where}: "
                         f"{', '.join(list_recipes(source.directory)) or 'none'})")
    return args.config_name


def run_recipe(config, resolved_yaml: str, argv: Sequence[str] = ()) -> None:
    """Run a validated recipe in this process. The loop's RunFailed (data, paths, layout, checkpoints,
    divergence) is a UsageError; a stop by SIGINT / SIGTERM prints one line (with the command that resumes
    the run, built from ``argv``, when a checkpoint was saved) and exits with 128 + the signal."""
    from nemo_mft.megatron import megatron_on_cpu
    from nemo_mft.training.loop import RunFailed, RunInterrupted, run_finetune

    try:
        with megatron_on_cpu():
            run_finetune(config, resolved_yaml=resolved_yaml)
    except RunFailed as err:
        raise UsageError(str(err)) from err
    except RunInterrupted as stop:
        _stopped(stop, argv)
    except KeyboardInterrupt:
        print(f"{PROG} finetune: interrupted before training started; nothing was saved", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def resume_command(argv: Sequence[str], checkpoint_save: str) -> str:
    """The command that resumes this run: the same arguments with ``checkpoint.load=SAVE`` (replacing any
    earlier checkpoint.load), under torchrun with the same process count when there were several."""
    args = [a for a in argv if not a.lstrip("+").startswith("checkpoint.load=")]
    args.append(f"checkpoint.load={checkpoint_save}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if world == 1:
        launcher = f"{PROG} finetune"
    elif local == world:
        launcher = f"torchrun --standalone --nproc_per_node={world} -m nemo_mft.finetune"
    else:
        launcher = "<your multi-node launcher> -m nemo_mft.finetune"
    return " ".join([launcher, *(shlex.quote(a) for a in args)])


def _stopped(stop, argv: Sequence[str]) -> None:
    """One line for a run stopped by SIGINT/SIGTERM (global rank 0), then exit 128 + the signal (130 / 143)."""
    name = signal.Signals(stop.signum).name
    if stop.checkpoint is not None:
        message = (f"{PROG} finetune: stopped by {name} after iteration {stop.iteration}; checkpoint "
                   f"{stop.checkpoint} saved; resume with: {resume_command(argv, os.path.dirname(stop.checkpoint))}")
    else:
        message = (f"{PROG} finetune: stopped by {name} after iteration {stop.iteration}; no checkpoint.save is "
                   "set, so this run cannot be resumed")
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr)
    sys.exit(128 + stop.signum)


def _information_only_task(cfg) -> None:
    """The task of Hydra's application, which this command uses only for information options."""
    raise AssertionError("Hydra's application ran a task; runs go through nemo_mft.finetune.recipe")


def show_with_hydra(argv: Sequence[str], default_dir: Optional[str]) -> None:
    """Hand an information command line (``--cfg``, ``--info``, ``--help``) to Hydra's application."""
    import hydra

    from nemo_mft.config import register_schema

    register_schema()
    app = hydra.main(version_base=None, config_path=default_dir, config_name=None)(_information_only_task)
    saved_argv = sys.argv
    sys.argv = [f"{PROG} finetune", *hydra_argv(argv)]
    try:
        app()
    finally:
        sys.argv = saved_argv


def quiet_import_warnings() -> None:
    """Hide megatron-core's import-time notices about optional packages (TE, apex) and deprecations."""
    for pattern in (r"(Transformer Engine and )?Apex (are|is) not installed", r"full scope is deprecated",
                    r"Please use DTensor instead", r"`load_state_dict` is deprecated"):
        warnings.filterwarnings("ignore", message=pattern)


def finetune_main(argv: Optional[Sequence[str]] = None,
                  runner: Optional[Callable[[object, str], object]] = None) -> None:
    """``python -m nemo_mft.finetune [hydra args]``: compose the recipe, validate it and run it.

    ``runner(config, resolved_yaml)`` runs the validated recipe (default :func:`run_recipe`). A user
    error exits with status 2 and one line on stderr (`nemo_mft.finetune.errors`).
    """
    quiet_import_warnings()
    # megatron's tensor-parallel layers want one CUDA work queue (ordering of TP communication and compute).
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    with reported_errors("finetune"):
        args = parse_finetune_args(argv)
        default_dir = default_config_dir()
        if args.info and args.config_name is None:
            if args.config_path is None and default_dir is None:
                raise UsageError(f"no recipe directory found: pass --config-path or set {CONFIG_DIR_ENV}")
            show_with_hydra(argv, default_dir)
            return
        source = recipe_source(args.config_path, default_dir, os.getcwd())
        name = require_config_name(args, source)
        if args.info:
            compose_checked(source, name, args.overrides)  # the same checks as a run, before Hydra prints
            show_with_hydra(argv, default_dir)
            return
        config, resolved_yaml = load_recipe(source, name, args.overrides)
        if runner is not None:
            runner(config, resolved_yaml)
        else:
            run_recipe(config, resolved_yaml, argv)


USAGE = f"""usage: {PROG} <command> [args]

commands:
  finetune   run a finetuning recipe (Hydra): {PROG} finetune --config-name NAME [key=value ...]
             see `{PROG} finetune --help`
  bridge     train a Megatron-Bridge recipe with Bridge's finetune() and the MFT objective:
             {PROG} bridge --recipe MODULE:FUNCTION [--config-file YAML] [key=value ...]; see `{PROG} bridge --help`
  import     convert a Hugging Face model directory into a weights-only checkpoint (any TP/PP layout loads it):
             {PROG} import HF_DIR OUT [--dtype bf16|fp16|fp32]; see `{PROG} import --help`
  export     write a checkpoint as a Hugging Face model directory (for NIM / vLLM / transformers):
             {PROG} export --checkpoint CKPT --out DIR [--run-config RUN/config.yaml (a model trained from
             scratch)] [--dtype bf16|fp16|fp32] [--max-shard-size 5GB]; see `{PROG} export --help`
"""


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The ``nemo-mft`` console script: dispatches to a subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "finetune":
        finetune_main(rest)
    elif command == "export":
        quiet_import_warnings()
        from nemo_mft.finetune.export_command import export_main

        sys.exit(export_main(rest))
    elif command == "bridge":
        quiet_import_warnings()
        from nemo_mft.finetune.bridge_command import bridge_main

        sys.exit(bridge_main(rest))
    elif command == "import":
        quiet_import_warnings()
        from nemo_mft.finetune.import_command import import_main

        sys.exit(import_main(rest))
    else:
        print(f"{PROG}: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
        sys.exit(2)


def compose_recipe(config_name: str, overrides: Sequence[str] = (), config_dir: Optional[str] = None):
    """The composed recipe (a DictConfig, keys checked, values not yet validated) without running it: for
    tests and notebooks. Raises `nemo_mft.finetune.errors.UsageError`."""
    source = config_source(config_dir or default_config_dir(), os.getcwd())
    return compose_checked(source, config_name, overrides)
