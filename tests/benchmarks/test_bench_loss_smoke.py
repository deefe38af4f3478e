"""Smoke test of benchmarks/bench_loss.py: it runs end to end and prints a row per method (no timings asserted)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("modelopt.torch.distill")

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_loss.py")


def test_quick_cpu_run_prints_a_row_for_both_methods():
    cmd = [sys.executable, SCRIPT, "--quick", "--tokens", "32", "--vocab", "512", "--repeats", "1",
           "--warmup", "0", "--methods", "torch,modelopt", "--markdown"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for method in ("nemo-mft torch", "ModelOpt MFTLoss"):
        row = next((r for r in rows if r.startswith(f"| {method} |")), None)
        assert row is not None, proc.stdout
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:4] == ["32", "512", "float32"], row
        assert cells[4] not in ("error", "OOM"), proc.stdout
