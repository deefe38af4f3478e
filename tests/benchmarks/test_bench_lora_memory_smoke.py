"""benchmarks/bench_lora_memory.py end to end on the tiny chat model (tests/tiny_chat_model.py): four runs, one
table row each, ratios that are the ratios of the measured peaks (no memory thresholds: those are measured,
not asserted)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_lora_memory.py")


def test_quick_run_prints_one_row_per_configuration(tmp_path):
    from tiny_chat_model import write_tiny_chat_model

    model = write_tiny_chat_model(str(tmp_path / "model"))
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--model", model, "--seq-length", "64", "--iters", "1",
                           "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["FT + LoRA", "MFT + LoRA (teacher = adapters off)", "FT full weights",
                                         "MFT full weights (frozen teacher copy)"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "MiB" not in line and "---" not in line]
    assert len(table) == 4
    for line, row in zip(table, rows):
        ratio = float(line.split("|")[3].strip().rstrip("x"))
        assert ratio == pytest.approx(row["peak_bytes"] / rows[0]["peak_bytes"], abs=6e-4)
