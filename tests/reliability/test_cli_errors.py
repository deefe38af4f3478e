"""The commands' error contract: a user error is exit status 2 and one line on stderr, without a traceback
(``NEMO_MFT_DEBUG=1`` adds it); a bug keeps its traceback. Every key, however it enters the recipe
(``key=v``, ``+key=v``, ``++key=v``, a recipe file), is held against the schema.

Most cases run the command in-process (``finetune_main`` with a runner that records the config instead of
training); a few run it as a subprocess, to see the real exit status and stderr.
"""

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from nemo_mft.config import FinetuneConfig, schema_keys, unknown_key_message
from nemo_mft.finetune import cli
from nemo_mft.finetune.errors import DEBUG_ENV, UsageError, debug_enabled, one_line, reported_errors
from nemo_mft.finetune.export_command import export_main

PREFIX = "nemo-mft finetune: error: "


class Recorder:
    """A runner for ``finetune_main`` that keeps the validated config instead of training."""

    def __init__(self):
        self.configs = []

    def __call__(self, config, resolved_yaml):
        self.configs.append((config, resolved_yaml))


def _finetune(argv, capsys):
    """(exit status or None, stderr, recorder) of an in-process ``nemo-mft finetune argv``."""
    runner = Recorder()
    try:
        cli.finetune_main(argv, runner=runner)
        code = None
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err, runner


def _one_error_line(err, prefix=PREFIX):
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0][len(prefix):]


# ---- strict keys: every form of override, and recipe files


@pytest.mark.parametrize("override, message", [
    ("+train.bogus=1", "unknown key train.bogus"),
    ("++mft.tua=0.1", "unknown key mft.tua; did you mean mft.tau?"),
    ("mft.tua=0.1", "unknown key mft.tua; did you mean mft.tau?"),
    ("+mft.tua=0.1", "unknown key mft.tua; did you mean mft.tau?"),
    ("++model.hidden_sizes=3", "unknown key model.hidden_sizes; did you mean model.hidden_size?"),
    ("foo=1", "unknown key foo (the sections are: model, train,"),
    ("+foo=1", "unknown key foo (the sections are: model, train,"),
    ("+a.b.c=1", "unknown key a.b.c"),
    ("~mft.tua", "unknown key mft.tua; did you mean mft.tau?"),
    ("~dataset.dataset_root", "~dataset.dataset_root: dataset.dataset_root is part of the recipe schema and "
                              "cannot be deleted"),
    ("~mft", "~mft: mft is part of the recipe schema and cannot be deleted; set its keys instead (mft.method=...)"),
    ("mft.tau=[1,", "cannot parse override 'mft.tau=[1,': no viable alternative"),
    ("mft.tau", "cannot parse override 'mft.tau': missing EQUAL"),
    ("=1", "override '=1' names no key"),
    ("+mft.tau=0.1", "An item is already at 'mft.tau'"),
    ("train.train_iters=many", "Value 'many' of type 'str' could not be converted to Integer (at train.train_iters)"),
    ("mft.tau=${oops}", "Interpolation key 'oops' not found (at mft.tau)"),
    ("mft.tau=1.5", "mft.tau must be in [0, 1]"),
])
def test_bad_overrides_are_one_line_and_exit_2(capsys, override, message):
    code, err, runner = _finetune(["--config-name", "mft_tiny", "dataset.dataset_root=/data", override], capsys)
    assert code == 2 and message in _one_error_line(err)
    assert runner.configs == []


def test_good_overrides_of_every_form_reach_the_config(capsys):
    code, err, runner = _finetune(["--config-name", "mft_tiny", "dataset.dataset_root=/data", "mft.tau=0.1",
                                   "++train.train_iters=7", "++mft.temperature=2.0", "hydra.run.dir=elsewhere"],
                                  capsys)
    assert code is None and err == ""
    (config, resolved), = runner.configs
    assert isinstance(config, FinetuneConfig)
    assert (config.mft.tau, config.train.train_iters, config.mft.temperature) == (0.1, 7, 2.0)
    assert "train_iters: 7" in resolved


def _recipe_dir(tmp_path, **recipes):
    for name, text in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("defaults: [finetune_schema, _self_]\ntrain:\n  bogus: 1\n", "recipe r: unknown key train.bogus"),
    ("defaults: [finetune_schema, _self_]\nmft:\n  tua: 0.1\n", "recipe r: unknown key mft.tua; did you mean mft.tau?"),
    ("defaults: [finetune_schema, _self_]\ntrain: [1,\n", "recipe r: not valid YAML"),
    ("defaults: [finetune_schema, nothere, _self_]\n", "Could not load 'nothere'"),
    ("train:\n  seed: 3\n", "must start with `defaults: [finetune_schema, _self_]`"),
])
def test_recipe_file_problems(tmp_path, capsys, text, message):
    config_dir = _recipe_dir(tmp_path, r=text)
    code, err, _ = _finetune(["--config-path", config_dir, "--config-name", "r", "dataset.dataset_root=/d"], capsys)
    assert code == 2 and message in _one_error_line(err)


# ---- the command line itself


@pytest.mark.parametrize("argv, message", [
    (["--config-name", "mft_tin"], "--config-name mft_tin: no such recipe in"),
    (["--config-name", "mft_tin"], "did you mean mft_tiny?"),
    (["--config-name", "mft_tiny", "--config-path", "/no/such/dir"], "--config-path /no/such/dir: no such directory"),
    (["--config-name"], "--config-name needs a value"),
    (["mft.tau=0.1"], "--config-name is required (recipes in"),
    (["--config-name", "mft_tiny", "-m"], "unknown option -m"),
    (["--config-name", "mft_tiny", "--resolve"], "--resolve goes with --cfg"),
    (["--config-name", "mft_tiny", "--cfg", "job", "+train.bogus=1"], "unknown key train.bogus"),
])
def test_command_line_mistakes(capsys, argv, message):
    code, err, _ = _finetune(argv, capsys)
    assert code == 2 and message in _one_error_line(err)


def test_cfg_job_output(capfd):
    runner = Recorder()
    cli.finetune_main(["--config-name", "mft_tiny", "mft.tau=0.3", "--cfg", "job"], runner=runner)
    out = capfd.readouterr().out
    assert "tau: 0.3" in out and "dataset_root: ???" in out and runner.configs == []


def test_relative_config_path_is_from_the_cwd(tmp_path, monkeypatch, capsys):
    _recipe_dir(tmp_path, r="defaults: [finetune_schema, _self_]\nmft:\n  tau: 0.05\n")
    monkeypatch.chdir(tmp_path.parent)
    code, err, runner = _finetune(["--config-path", tmp_path.name, "--config-name", "r",
                                   "dataset.dataset_root=/d"], capsys)
    assert code is None and runner.configs[0][0].mft.tau == 0.05


def test_a_bug_is_not_a_usage_error(capsys):
    def broken(config, resolved_yaml):
        raise RuntimeError("a bug in the loop")

    with pytest.raises(RuntimeError, match="a bug in the loop"):
        cli.finetune_main(["--config-name", "mft_tiny", "dataset.dataset_root=/data"], runner=broken)


def test_debug_setting_adds_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    code, err, _ = _finetune(["--config-name", "mft_tiny", "mft.tua=0.1"], capsys)
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == PREFIX + "unknown key mft.tua; did you mean mft.tau?"


# ---- the pieces


def test_schema_keys_and_suggestions():
    keys = schema_keys()
    assert keys[0] == "model" and "mft.tau" in keys and "dataset.dataset_root" in keys
    assert unknown_key_message("mft.tua") == "unknown key mft.tua; did you mean mft.tau?"
    assert unknown_key_message("trian.seed") == "unknown key trian.seed; did you mean train.seed?"
    assert unknown_key_message("mft.zzzzzz").startswith("unknown key mft.zzzzzz (mft has: method, tau,")


def test_one_line_and_debug_values():
    assert one_line("a\n  b\n\nc ") == "a b c"
    assert [debug_enabled({DEBUG_ENV: v}) for v in ("1", "yes", "", "0", "false")] == [True, True, False, False, False]
    assert debug_enabled({}) is False


def test_reported_errors_leaves_other_exceptions_alone(capsys):
    with pytest.raises(KeyError):
        with reported_errors("finetune", environ={}):
            raise KeyError("bug")
    with pytest.raises(SystemExit) as exit_info:
        with reported_errors("export", environ={}):
            raise UsageError("first\nsecond")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "nemo-mft export: error: first second\n"


# ---- export


def _llama_run_config(tmp_path, name, **extra):
    """A run's config.yaml for a Llama-shaped model (``extra``: top-level lines added to it)."""
    cfg = OmegaConf.structured(FinetuneConfig)
    cfg.dataset.dataset_root = str(tmp_path)
    cfg.model.normalization, cfg.model.activation, cfg.model.add_bias_linear = "RMSNorm", "swiglu", False
    path = tmp_path / name
    text = OmegaConf.to_yaml(cfg)
    path.write_text(text + "".join(f"{key}: {value}\n" for key, value in extra.items()))
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("no_arguments", "the following arguments are required: --checkpoint, --out"),
    ("missing_config", "no run config at"),
    ("unknown_key", "unknown key bogus"),
    ("missing_checkpoint", "no checkpoint at"),
])
def test_export_errors_are_one_line(tmp_path, capsys, case, message):
    out = str(tmp_path / "out")
    if case == "no_arguments":
        argv = []
    elif case == "missing_config":
        argv = ["--run-config", str(tmp_path / "none.yaml"), "--checkpoint", "c", "--out", out]
    elif case == "unknown_key":
        argv = ["--run-config", _llama_run_config(tmp_path, "config.yaml", bogus=1), "--checkpoint", "c", "--out", out]
    else:
        argv = ["--run-config", _llama_run_config(tmp_path, "config.yaml"), "--checkpoint", str(tmp_path / "none"),
                "--out", out]
    with pytest.raises(SystemExit) as exit_info:
        export_main(argv)
    assert exit_info.value.code == 2
    assert message in _one_error_line(capsys.readouterr().err, prefix="nemo-mft export: error: ")
    assert not (tmp_path / "out").exists()


# ---- a few real processes: exit status and stderr as a user sees them

SUBPROCESS_CASES = [
    (["finetune", "--config-name", "mft_tiny", "dataset.dataset_root=/data", "+train.bogus=1"], {},
     "unknown key train.bogus"),
    (["finetune", "--config-name", "mft_tiny", "dataset.dataset_root=/data", "mft.tau=[1,"], {},
     "cannot parse override 'mft.tau=[1,'"),
    (["finetune", "--config-name", "mft_tin"], {}, "did you mean mft_tiny?"),
    (["finetune", "--config-name", "mft_tiny", "dataset.dataset_root=/no/such/data"], {},
     "dataset.dataset_root is not a directory"),
    (["export", "--run-config", "/no/such/config.yaml", "--checkpoint", "c", "--out", "o"], {}, "no run config at"),
]


def _run_cli(args, env_extra, cwd):
    env = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    env.update(env_extra)
    code = "import sys; from nemo_mft.finetune.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, env_extra, message", SUBPROCESS_CASES, ids=lambda v: str(v)[:40])
def test_the_process_exits_2_with_one_line(tmp_path, args, env_extra, message):
    proc = _run_cli(args, env_extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in _one_error_line(proc.stderr, prefix=f"nemo-mft {args[0]}: error: ")
    assert "HYDRA_FULL_ERROR" not in proc.stderr + proc.stdout


def test_the_process_shows_the_traceback_in_debug_mode(tmp_path):
    proc = _run_cli(["finetune", "--config-name", "mft_tiny", "mft.tua=0.1"], {DEBUG_ENV: "1"}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == PREFIX + "unknown key mft.tua; did you mean mft.tau?"
