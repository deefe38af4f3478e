"""examples/bridge_recipe_mft: `run.sh --smoke` trains the example's Bridge recipe with MFT through `nemo-mft bridge`
(Bridge's own finetune(), under torchrun), and the multi-node launcher's Bridge path (examples/multinode_launch/
launch.sh bridge, two "nodes" on localhost with a c10d rendezvous, one process each: DP=2) trains the same recipe to
the same losses as the one-process smoke run (DP=1).

Both run on this CPU machine only with the TEST-ONLY harness injected: tests/bridge/cpu_site on PYTHONPATH and
NEMO_MFT_BRIDGE_CPU_HARNESS=1 make every torchrun worker install the TransformerEngine stand-in and the CPU patches
(tests/bridge/cpu_site/sitecustomize.py). The three processes run concurrently (about 60 s on 2 cores).
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "bridge_recipe_mft"
LAUNCH = ROOT / "examples" / "multinode_launch" / "launch.sh"
CPU_SITE = Path(__file__).resolve().parent / "cpu_site"
TIMEOUT = 600
ITERS = 4  # tiny_recipe.py's train_iters
# Bridge's training log line: "iteration        2/       4 | ... | loss: 8.893072E-01 | student_ce: ... |"
LOG_LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+) \|.*?\| loss: ([0-9.E+-]+) \| student_ce: ([0-9.E+-]+) \| "
                      r"mixing_weight: ([0-9.E+-]+) \|")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RDZV_", "NNODES", "NODE_RANK"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(CPU_SITE), NEMO_MFT_BRIDGE_CPU_HARNESS="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _losses(log: str) -> dict[int, tuple[float, float, float]]:
    """{iteration: (loss, student_ce, mixing_weight)} from Bridge's log lines (rank 0 prints them once)."""
    found = {}
    for match in LOG_LINE.finditer(log):
        assert int(match.group(2)) == ITERS
        found[int(match.group(1))] = tuple(float(match.group(i)) for i in (3, 4, 5))
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge_example")
    inputs = root / "inputs"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(inputs)], check=True, capture_output=True,
                   timeout=120)
    smoke = subprocess.Popen([str(EXAMPLE / "run.sh"), "--smoke", "--work", str(root / "smoke")],
                             env=_env(NPROC_PER_NODE="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    recipe = ["--recipe", "tiny_recipe:tiny_llama_sft_config", f"dataset.dataset_root={inputs / 'data'}",
              f"tokenizer.tokenizer_model={inputs / 'tokenizer'}"]
    nodes = [subprocess.Popen([str(LAUNCH), "bridge", *recipe],
                              env=_env(PYTHONPATH=f"{CPU_SITE}:{EXAMPLE}:{ROOT}", RUN_DIR=str(root / "two_nodes"),
                                       NNODES="2", NODE_RANK=str(node), NPROC_PER_NODE="1",
                                       RDZV_ENDPOINT=f"127.0.0.1:{port}", RDZV_ID="bridge-example",
                                       SHARED_CHECK_TIMEOUT="60"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    outputs = {}
    for name, proc in (("smoke", smoke), ("node0", nodes[0]), ("node1", nodes[1])):
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-8000:]}"
        outputs[name] = out
    return root, outputs


def test_the_smoke_run_trains_the_recipe_with_mft_in_bridges_loop(runs):
    root, outputs = runs
    losses = _losses(outputs["smoke"])
    assert sorted(losses) == list(range(1, ITERS + 1)), outputs["smoke"][-4000:]
    for loss, student_ce, mixing_weight in losses.values():
        # MFT's own metrics in Bridge's log: the objective is ours, not Bridge's cross-entropy.
        assert math.isfinite(loss) and 0 < loss < student_ce and 0 < mixing_weight < 1
    assert losses[ITERS][0] < losses[1][0]  # it trained
    ckpt = root / "smoke" / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
    assert (ckpt / f"iter_{ITERS:07d}").is_dir()
    assert (root / "smoke" / "train.log").read_text().count("| loss: ") == ITERS


def test_two_nodes_through_the_launcher_train_like_one_process(runs):
    root, outputs = runs
    one = _losses(outputs["smoke"])
    two = {}
    for node in ("node0", "node1"):
        assert "launch.sh: node" in outputs[node] and "of 2, 1 process(es)" in outputs[node]
        two.update(_losses(outputs[node]))  # whichever agent holds rank 0 prints them
    assert sorted(two) == list(range(1, ITERS + 1))
    for iteration in one:
        # DP=2 over two torchrun agents vs DP=1: the same data and math, summed in another order (the log prints
        # 7 significant digits).
        assert two[iteration] == pytest.approx(one[iteration], rel=1e-5), iteration
    ckpt = root / "two_nodes" / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
    assert len(list((root / "two_nodes" / ".launch" / "bridge-example.0").iterdir())) == 2
