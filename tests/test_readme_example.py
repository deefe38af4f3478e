"""The README's "MFT in your own megatron-core loop" example runs as printed (in a fresh process)."""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## MFT in your own megatron-core loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_own_loop_example_trains_one_step(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_example())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loss_sum, count = ast.literal_eval(proc.stdout.strip().splitlines()[-1])  # "(sum, count)" as printed
    assert count == 64.0
    # MFT from identical teacher and student on random labels: the loss is the CE-sized correction term.
    assert math.isfinite(loss_sum) and loss_sum > 0
