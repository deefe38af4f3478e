"""Command line: ``nemo-mft finetune`` / ``python -m nemo_mft.finetune``, a Hydra application, and
``nemo-mft export`` (`nemo_mft.finetune.export_command`).

    nemo-mft finetune --config-name mft_tiny dataset.dataset_root=/data mft.tau=0.1 ++train.train_iters=50
    torchrun --nproc_per_node=8 -m nemo_mft.finetune --config-name mft_llama3_8b dataset.dataset_root=/data

Everything after ``finetune`` is Hydra's command line: ``--config-path`` (default: the repository's
``conf/``, or ``$NEMO_MFT_CONFIG_DIR``; a relative path is taken from the current directory),
``--config-name`` (required: a recipe), dotted overrides with Hydra's ``+key=v`` / ``++key=v`` / ``~key``
grammar, ``--cfg job`` to print the composed recipe, ``--help``.

Hydra's own run directory, chdir and logging set-up are switched off (``hydra.run.dir=.``,
``hydra.output_subdir=null``, ``hydra.job.chdir=False``, ``hydra/job_logging=none``,
``hydra/hydra_logging=none``): the run directory is ``logger.log_dir``.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

PROG = "nemo-mft"
CONFIG_DIR_ENV = "NEMO_MFT_CONFIG_DIR"
HYDRA_SETTINGS = (
    "hydra.run.dir=.",
    "hydra.output_subdir=null",
    "hydra.job.chdir=False",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
)
_EXIT_SETUP_ERROR = 2


def default_config_dir() -> Optional[str]:
    """``$NEMO_MFT_CONFIG_DIR``, else ``conf/`` of the checkout this package is imported from."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return os.path.abspath(env)
    repo_conf = Path(__file__).resolve().parents[2] / "conf"
    return str(repo_conf) if repo_conf.is_dir() else None


def list_recipes(config_dir: Optional[str]) -> list[str]:
    if not config_dir or not os.path.isdir(config_dir):
        return []
    return sorted(name[:-5] for name in os.listdir(config_dir) if name.endswith(".yaml"))


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
    """The user's arguments, made absolute where Hydra would not take them from the cwd, plus
    :data:`HYDRA_SETTINGS` (each unless the user set that key)."""
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


def _error(message: str) -> None:
    print(f"{PROG} finetune: error: {message}", file=sys.stderr)
    sys.exit(_EXIT_SETUP_ERROR)


def _task(cfg, argv: Sequence[str]) -> None:
    """Validate and run the composed recipe; ``argv``: the user's `finetune` arguments (for a resume hint)."""
    from omegaconf import OmegaConf

    from nemo_mft.config import validate_config
    from nemo_mft.megatron import megatron_on_cpu
    from nemo_mft.training.loop import RunFailed, RunInterrupted, run_finetune

    try:
        config = validate_config(cfg)
    except ValueError as err:
        _error(str(err))
    try:
        with megatron_on_cpu():
            run_finetune(config, resolved_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    except RunFailed as err:
        _error(str(err))
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
    """One line for a run stopped by SIGINT/SIGTERM, then exit 128 + the signal (130 / 143)."""
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


def quiet_import_warnings() -> None:
    """Hide megatron-core's import-time notices about optional packages (TE, apex) and deprecations."""
    for pattern in (r"(Transformer Engine and )?Apex (are|is) not installed", r"full scope is deprecated",
                    r"Please use DTensor instead", r"`load_state_dict` is deprecated"):
        warnings.filterwarnings("ignore", message=pattern)


def finetune_main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m nemo_mft.finetune [hydra args]``: compose the recipe and run it."""
    quiet_import_warnings()
    # megatron's tensor-parallel layers want one CUDA work queue (ordering of TP communication and compute).
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    import hydra

    from nemo_mft.config import register_schema

    argv = list(sys.argv[1:] if argv is None else argv)
    info_only = any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c") or
                    a.startswith(("--info=", "--cfg=")) for a in argv)
    _, config_path = _option_value(argv, ("--config-path", "-cp"))
    _, config_name = _option_value(argv, ("--config-name", "-cn"))
    config_dir = default_config_dir()
    if config_name is None and not info_only:
        where = config_path or config_dir
        _error(f"--config-name is required (recipes in {where}: {', '.join(list_recipes(where)) or 'none'})")
    if config_path is None and config_dir is None:
        _error(f"no recipe directory found: pass --config-path or set {CONFIG_DIR_ENV}")

    register_schema()

    def task(cfg) -> None:
        _task(cfg, argv)

    app = hydra.main(version_base=None, config_path=config_dir, config_name=None)(task)
    saved_argv = sys.argv
    sys.argv = [f"{PROG} finetune", *hydra_argv(argv)]
    try:
        app()
    finally:
        sys.argv = saved_argv


USAGE = f"""usage: {PROG} <command> [args]

commands:
  finetune   run a finetuning recipe (Hydra): {PROG} finetune --config-name NAME [key=value ...]
             see `{PROG} finetune --help`
  export     write a run's checkpoint as a Hugging Face Llama directory (for NIM / vLLM):
             {PROG} export --run-config RUN/config.yaml --checkpoint CKPT --out DIR; see `{PROG} export --help`
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
        from nemo_mft.finetune.export_command import export_main

        quiet_import_warnings()
        sys.exit(export_main(rest))
    else:
        print(f"{PROG}: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
        sys.exit(2)


def compose_recipe(config_name: str, overrides: Sequence[str] = (), config_dir: Optional[str] = None):
    """The composed recipe (a DictConfig) without running it: for tests and notebooks."""
    from hydra import compose, initialize_config_dir

    from nemo_mft.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=os.path.abspath(config_dir or default_config_dir()), version_base=None):
        return compose(config_name, overrides=list(overrides))
