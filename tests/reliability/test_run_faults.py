"""Faults of a finetuning run through the real `nemo-mft finetune` command (CPU, tiny recipe): stop signals,
a resume that changes the recipe, a directory held by another run, divergence, and options or paths this
machine cannot use. Each case checks the exit code, the one message line, and that nothing the user had
was changed by a refused run."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_mft.training.guards import DirectoryLock
from recipe_data import write_qa_data

BIN = Path(sys.executable).parent
TIMEOUT = 240
BASE = ["--config-name", "mft_tiny", "dataset.seq_length=32", "train.global_batch_size=4",
        "evaluation.max_eval_windows=4", "logger.progress_bar=false", "logger.tensorboard=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_qa_data(tmp_path_factory.mktemp("faults_data"))


def _start(args, cwd) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    # SIGINT as in a terminal: a test runner started in the background may have it ignored, and the
    # child would inherit that (see guards.StopSignals).
    return subprocess.Popen([str(BIN / "nemo-mft"), "finetune", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finish(proc) -> tuple[int, str]:
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def _last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait_for_training(log_dir: Path, proc) -> None:
    """Until the run has logged a training iteration (a metrics record with a loss)."""
    metrics = log_dir / "metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any('"loss"' in line for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError("the run never reached its first training iteration")


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    """Run I: SIGINT during training (checkpoint.save set); run J: SIGTERM without checkpoint.save."""
    root = tmp_path_factory.mktemp("faults")
    args_i = BASE + [f"dataset.dataset_root={data}", "train.train_iters=150", "logger.log_interval=1",
                     "logger.log_dir=runs/i", "checkpoint.save=runs/i/ckpt"]
    args_j = BASE + [f"dataset.dataset_root={data}", "train.train_iters=150", "logger.log_interval=1",
                     "logger.log_dir=runs/j"]
    proc_i, proc_j = _start(args_i, root), _start(args_j, root)
    _wait_for_training(root / "runs" / "i", proc_i)
    proc_i.send_signal(signal.SIGINT)
    _wait_for_training(root / "runs" / "j", proc_j)
    proc_j.send_signal(signal.SIGTERM)
    return root, args_i, _finish(proc_i), _finish(proc_j)


def test_sigint_saves_and_prints_the_exact_resume_command(interrupted):
    root, args, (code, err), _ = interrupted
    assert code == 130, err
    line = _last_line(err)
    assert line.startswith("nemo-mft finetune: stopped by SIGINT after iteration "), line
    assert "Traceback" not in err
    iteration = int(line.split("after iteration ")[1].split(";")[0])
    assert 1 <= iteration < 150
    tracker = (root / "runs" / "i" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip()
    assert int(tracker) == iteration, "the stop must save the iteration it stopped after"
    command = line.split("resume with: ")[1]
    assert command == "nemo-mft finetune " + " ".join(shlex.quote(a) for a in args + ["checkpoint.load=runs/i/ckpt"])
    argv = shlex.split(command)
    resumed = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=root, capture_output=True, text=True,
                             timeout=TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((root / "runs" / "i" / "summary.json").read_text())
    assert summary["iterations"] == 150


def test_sigterm_without_a_save_directory_says_it_cannot_resume(interrupted):
    _, _, _, (code, err) = interrupted
    assert code == 143, err
    line = _last_line(err)
    assert line.startswith("nemo-mft finetune: stopped by SIGTERM after iteration ")
    assert line.endswith("no checkpoint.save is set, so this run cannot be resumed") and "resume with" not in line


def test_resume_with_a_changed_recipe_is_refused_and_changes_nothing(interrupted, data):
    root, args, _, _ = interrupted
    before = _digest(root / "runs" / "i")
    code, err = _finish(_start(args + ["checkpoint.load=runs/i/ckpt", "mft.tau=0.1", "train.seed=5"], root))
    assert code == 2, err
    line = _last_line(err)
    assert line.startswith("nemo-mft finetune: error: checkpoint.load=runs/i/ckpt: this recipe changes the training")
    assert "mft.tau: 0.25 -> 0.1; train.seed: 1234 -> 5." in line and "resume_allow_changes" in line
    assert _digest(root / "runs" / "i") == before


@pytest.fixture(scope="module")
def refused(data, tmp_path_factory):
    """Runs that must be refused or stopped, two at a time: held lock, divergence, triton, file as log_dir."""
    root = tmp_path_factory.mktemp("refused")
    (root / "held").mkdir()
    (root / "held" / "notes.txt").write_text("user file")
    (root / "a_file").write_text("not a directory")
    common = BASE + [f"dataset.dataset_root={data}"]
    results = {}
    with DirectoryLock(str(root / "held")):
        lock = _start(common + ["train.train_iters=4", "logger.log_dir=held"], root)
        diverge = _start(common + ["train.train_iters=12", "optimizer.lr=200", "optimizer.clip_grad=0",
                                   "scheduler.lr_warmup_iters=6", "logger.log_dir=runs/d", "checkpoint.save=runs/d/ckpt",
                                   "checkpoint.save_interval=1", "evaluation.eval_interval=null",
                                   "train.divergence_factor=3"], root)
        results["lock"] = _finish(lock)
    results["diverge"] = _finish(diverge)
    triton = _start(common + ["mft.impl=triton", "logger.log_dir=runs/t"], root)
    file_dir = _start(common + ["logger.log_dir=a_file/logs"], root)
    results["triton"], results["file_dir"] = _finish(triton), _finish(file_dir)
    results["bf16"] = _finish(_start(common + ["model.params_dtype=bf16", "logger.log_dir=runs/b"], root))
    return root, results


def test_a_directory_in_use_by_another_run_is_refused(refused):
    root, results = refused
    code, err = results["lock"]
    assert code == 2, err
    assert _last_line(err).startswith(f"nemo-mft finetune: error: held is in use by another nemo-mft run (pid {os.getpid()} on ")
    assert sorted(p.name for p in (root / "held").iterdir()) == [".nemo_mft.lock", "notes.txt"]


def test_divergence_stops_before_saving_and_keeps_the_last_good_checkpoint(refused):
    root, results = refused
    code, err = results["diverge"]
    assert code == 2, err
    line = _last_line(err)
    assert line.startswith("nemo-mft finetune: error: training diverged at iteration "), line
    assert "(method mft, learning rate " in line and "nothing was saved from this state" in line
    iteration = int(line.split("at iteration ")[1].split(" ")[0])
    assert iteration >= 2, "the warmup starts at lr 0: iteration 1 cannot diverge"
    ckpt = root / "runs" / "d" / "ckpt"
    assert int((ckpt / "latest_checkpointed_iteration.txt").read_text()) == iteration - 1
    assert not (ckpt / f"iter_{iteration:07d}").exists()


def test_options_and_paths_this_machine_cannot_use(refused):
    root, results = refused
    code, err = results["triton"]
    assert code == 2 and _last_line(err).startswith("nemo-mft finetune: error: mft.impl=triton runs the fused "
                                                    "kernels on a CUDA GPU, and this machine has none")
    code, err = results["file_dir"]
    assert code == 2 and _last_line(err) == ("nemo-mft finetune: error: logger.log_dir=a_file/logs cannot be "
                                             f"created: {root / 'a_file'} is a file")
    code, err = results["bf16"]
    assert code == 2 and _last_line(err).startswith("nemo-mft finetune: error: model.params_dtype=bf16 needs a CUDA "
                                                    "GPU (megatron-core's mixed-precision optimizer takes CUDA")
    assert not (root / "runs" / "t").exists() and not (root / "runs" / "b").exists()
