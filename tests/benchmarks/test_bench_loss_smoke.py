"""benchmarks/bench_loss.py end to end on a small CPU case: a row per method whose ratio columns are the
ratios of its own measured columns, and the loss agreement with ModelOpt within fp32 round-off (no timing
is asserted against a threshold)."""

import os
import re
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
    cells = {}
    for method in ("nemo-mft torch", "ModelOpt MFTLoss"):
        row = next((r for r in rows if r.startswith(f"| {method} |")), None)
        assert row is not None, proc.stdout
        cells[method] = [c.strip() for c in row.strip("|").split("|")]
        assert cells[method][1:4] == ["32", "512", "float32"], row
        assert cells[method][4] not in ("error", "OOM"), proc.stdout
    ours, anchor = cells["nemo-mft torch"], cells["ModelOpt MFTLoss"]
    assert anchor[5] == "1.00x" and anchor[7] == "1.00x", "the anchor's ratios to itself"
    # columns: method, N, V, dtype, time ms, time vs ModelOpt, extra B/elem, mem vs ModelOpt
    assert float(ours[5].rstrip("x")) == pytest.approx(float(ours[4]) / float(anchor[4]), rel=0.05), (ours, anchor)
    assert float(ours[7].rstrip("x")) == pytest.approx(float(ours[6]) / float(anchor[6]), rel=0.05), (ours, anchor)
    agreement = re.search(r"loss agreement with ModelOpt: max relative difference (\S+)", proc.stdout)
    assert agreement is not None, proc.stdout
    assert float(agreement.group(1)) <= 1e-5, "nemo-mft and ModelOpt must compute the same loss"
