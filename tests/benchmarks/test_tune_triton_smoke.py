"""Smoke test of benchmarks/tune_triton.py under Triton's interpreter: every configuration runs, its output
is checked against the default's, and the best of each pass is named (no timings asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
numpy = pytest.importorskip("numpy")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tune_triton.py"


def _version(module) -> tuple[int, int]:
    return tuple(int(part) for part in module.__version__.split(".")[:2])


@pytest.mark.skipif(_version(triton) < (3, 7) and _version(numpy) >= (2, 4),
                    reason="Triton < 3.7's interpreter is broken with numpy >= 2.4")
def test_smoke_run_checks_every_configuration(tmp_path):
    out = tmp_path / "tune.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert [(r["pass_name"], r["status"]) for r in data["rows"]] == \
        [("statistics", "ok")] * 2 + [("gradient", "ok")] * 2
    assert set(data["best"]) == {"statistics", "gradient"} and "best: statistics BLOCK=" in proc.stdout
