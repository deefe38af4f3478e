"""examples/multinode_launch: two torchrun "nodes" on localhost (c10d rendezvous) train to the same losses as one
node with the same layout (DP=2); the Slurm script starts the same run through srun; the launcher's errors.

Runs: `run.sh --smoke` (two nodes through launch.sh, then one node through launch.sh: about 30 s) and
`slurm.sbatch` with stand-in `srun` / `scontrol` executables that start the script's command once per "node" on
localhost with SLURM_NODEID 0 and 1 (about 12 s). Only Slurm is replaced; torchrun, the c10d rendezvous and the
gloo process groups are real."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_mft.training.metrics_log import read_records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "multinode_launch"
LAUNCH = EXAMPLE / "launch.sh"
TIMEOUT = 300
SMOKE_ITERS = 3
# run.sh's smoke recipe (the Slurm run repeats it on run.sh's data, so its losses must be the same).
SMOKE_RECIPE = ["--config-name", "mft_tiny", "dataset.seq_length=32", f"train.train_iters={SMOKE_ITERS}",
                "train.global_batch_size=4", "train.micro_batch_size=1", "scheduler.lr_warmup_iters=1",
                "evaluation.eval_interval=null", "logger.progress_bar=false"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RDZV_", "NNODES", "NODE_RANK"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _losses(metrics: Path) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in read_records(str(metrics)) if "loss" in r}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("multinode") / "work"
    proc = subprocess.run([str(EXAMPLE / "run.sh"), "--smoke", "--work", str(work)], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"run.sh --smoke: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    assert f"equal losses over {SMOKE_ITERS} iterations" in proc.stdout
    return work


def test_two_nodes_on_localhost_train_like_one_node(smoke):
    two = smoke / "two_nodes"
    # Two torchrun agents, each with one process: rank 0 in one, rank 1 in the other.
    # (c10d assigns the ranks: either agent may hold rank 0.)
    node_logs = [(two / f"node{n}.log").read_text() for n in (0, 1)]
    ranks = [{r for r in (0, 1) if f"rank {r}]" in log} for log in node_logs]
    assert sorted(ranks, key=min) == [{0}, {1}], ranks
    assert "layout tp=1 pp=1 dp=2 (world 2)" in "".join(node_logs)
    assert len(list((two / ".launch").iterdir())) == 1 and len(list(next((two / ".launch").iterdir()).iterdir())) == 2
    one_log = (smoke / "one_node" / "one_node.log").read_text()
    assert "rank 0]" in one_log and "rank 1]" in one_log and "layout tp=1 pp=1 dp=2 (world 2)" in one_log
    two_losses, one_losses = _losses(two / "logs" / "metrics.jsonl"), _losses(smoke / "one_node" / "logs" / "metrics.jsonl")
    assert sorted(two_losses) == list(range(1, SMOKE_ITERS + 1))
    assert two_losses == one_losses  # exactly, not approximately
    assert len(set(two_losses.values())) == SMOKE_ITERS  # the model trained: the loss moved
    for run in (two, smoke / "one_node"):
        assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(SMOKE_ITERS)


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_script_starts_every_node_through_srun(smoke, tmp_path):
    """slurm.sbatch under stand-in Slurm commands: `scontrol show hostnames` names the nodes, `srun` runs its
    command once per node (concurrently, SLURM_NODEID 0..N-1) and fails if one failed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # One write per host, like scontrol on a long node list: a reader that stops after the first line (head -n 1)
    # makes the second write fail with SIGPIPE, which fails the job under pipefail.
    _executable(bin_dir / "scontrol", "#!/usr/bin/env bash\nfor host in 127.0.0.1 127.0.0.1; do echo $host; sleep 0.2; done\n")
    _executable(bin_dir / "srun", """#!/usr/bin/env bash
set -euo pipefail
echo "$*" > "$SRUN_LOGS/srun_args"
while [[ $1 == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@" > "$SRUN_LOGS/node$node.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
""")
    run_dir = tmp_path / "run"
    port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                           "print(s.getsockname()[1])"], capture_output=True, text=True, check=True).stdout.strip()
    env = _env(PATH=f"{bin_dir}:{os.environ['PATH']}", RUN_DIR=str(run_dir), SRUN_LOGS=str(tmp_path),
               SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_NNODES="2", SLURM_JOB_NODELIST="fake[0-1]",
               SLURM_SUBMIT_DIR=str(ROOT), SLURM_GPUS_PER_NODE="gpu:1", SLURM_CPUS_ON_NODE="16",
               SLURM_RESTART_COUNT="1", RDZV_PORT=port)
    proc = subprocess.run(["bash", str(EXAMPLE / "slurm.sbatch"), "finetune", *SMOKE_RECIPE,
                           f"dataset.dataset_root={smoke / 'data'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    logs = "\n".join((tmp_path / f"node{n}.log").read_text() for n in (0, 1) if (tmp_path / f"node{n}.log").exists())
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}\n{logs[-6000:]}"
    assert "node 0 of 2, 1 process(es), rendezvous 127.0.0.1:" in (tmp_path / "node0.log").read_text()
    assert "node 1 of 2" in (tmp_path / "node1.log").read_text()
    assert "--cpus-per-task=16" in (tmp_path / "srun_args").read_text().split()  # the node's CPUs, not 1
    assert sorted(p.name for p in (run_dir / ".launch").iterdir()) == ["4242.1"]  # this (re)start's markers
    assert _losses(run_dir / "logs" / "metrics.jsonl") == _losses(smoke / "two_nodes" / "logs" / "metrics.jsonl")


def _launch(args, **env):
    return subprocess.run([str(LAUNCH), *args], env=_env(**env), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, env, message", [
    (["finetune"], {}, "RUN_DIR is not set"),
    (["train"], {"RUN_DIR": "/tmp"}, "the first argument is the command, finetune or bridge"),
    (["finetune"], {"RUN_DIR": "/tmp", "NNODES": "2", "RDZV_ID": "x"}, "RDZV_ENDPOINT is not set"),
    (["finetune"], {"RUN_DIR": "/tmp", "NNODES": "2", "RDZV_ENDPOINT": "h:1"}, "RDZV_ID is not set"),
    (["finetune"], {"RUN_DIR": "/tmp", "NNODES": "2", "RDZV_ENDPOINT": "h", "RDZV_ID": "x"}, "must be host:port"),
    (["finetune"], {"RUN_DIR": "/tmp", "NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK must be an integer in 0..1"),
    (["finetune"], {"RUN_DIR": "/tmp", "NNODES": "two"}, "NNODES must be a positive integer"),
    (["finetune"], {"RUN_DIR": "/tmp", "NPROC_PER_NODE": "0"}, "NPROC_PER_NODE must be a positive integer"),
    (["finetune", "++logger.log_dir=/elsewhere"], {"RUN_DIR": "/tmp"}, "logger.log_dir is set by the launcher"),
    (["bridge", "checkpoint.save=/x"], {"RUN_DIR": "/tmp"}, "checkpoint.save is set by the launcher"),
    (["finetune"], {"RUN_DIR": "/tmp", "PYTHON": "/nonexistent/python"}, "cannot import torch and nemo_mft"),
])
def test_launcher_refuses_bad_settings_before_starting(args, env, message):
    proc = _launch(args, **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def test_launcher_stops_when_run_dir_is_not_shared(tmp_path):
    # The other node's marker never shows (as with a node-local RUN_DIR): stop after the timeout, exit 3.
    proc = _launch(["finetune", "--config-name", "mft_tiny"], RUN_DIR=str(tmp_path / "run"), NNODES="2",
                   RDZV_ENDPOINT="127.0.0.1:1", RDZV_ID="job1", SHARED_CHECK_TIMEOUT="1")
    assert proc.returncode == 3, proc.stderr
    assert "is not shared by all nodes, or a node did not start" in proc.stderr and "1 of 2 nodes" in proc.stderr


def test_slurm_script_needs_run_dir():
    proc = subprocess.run(["bash", str(EXAMPLE / "slurm.sbatch"), "finetune"], env=_env(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0 and "set RUN_DIR to a directory on shared storage" in proc.stderr
