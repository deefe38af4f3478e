"""benchmarks/bench_convert.py end to end on a tiny random Llama checkpoint (tests/hf/hf_models.py) at TP=1 and
TP=2: a row per anchor and per rank whose ratio columns are the ratios of its own measured columns, the JSON
holds what the table shows, and a TP=2 rank reads less than the whole checkpoint (no timing thresholds)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "hf"))

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_convert.py")


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _num(cell: str) -> float:
    return float(cell.rstrip("x"))


def test_quick_run_table_ratios_are_ratios_of_its_columns(tmp_path):
    from hf_models import build_case

    hf_dir = build_case("llama_tied", str(tmp_path / "tiny"), seed=0)
    out = tmp_path / "raw.json"
    cmd = [sys.executable, SCRIPT, "--hf-dir", hf_dir, "--layouts", "1x1,2x1", "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    header, rows = _cells(lines[0]), [dict(zip(_cells(lines[0]), _cells(line))) for line in lines[1:]]
    assert header[0] == "method" and len(rows) == 6, proc.stdout
    methods = [r["method"] for r in rows]
    assert methods == ["load_file + copy", "load_file (lazy mmap)", "transformers from_pretrained", "nemo-mft import TP=1 PP=1",
                       "nemo-mft import TP=2 PP=1", "nemo-mft import TP=2 PP=1"], methods
    anchor = rows[0]
    assert anchor["time vs load_file"] == anchor["MB/s vs load_file"] == anchor["step peak vs load_file"] == "1.00x"
    for r in rows:
        assert _num(r["MB/s"]) == pytest.approx(_num(r["MB read"]) / _num(r["time s"]), rel=2e-3), r
        for ratio, column in (("time vs load_file", "time s"), ("MB/s vs load_file", "MB/s"),
                              ("step peak vs load_file", "step peak MB")):
            assert _num(r[ratio]) == pytest.approx(_num(r[column]) / _num(anchor[column]), rel=1e-2, abs=6e-3), (
                ratio, r, anchor)
    raw = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in raw] == methods
    for shown, measured in zip(rows, raw):
        assert _num(shown["time s"]) == pytest.approx(measured["seconds"], rel=1e-3)
    whole = _num(rows[0]["MB read"])
    assert _num(rows[3]["MB read"]) == pytest.approx(whole, rel=1e-3)  # TP=1 reads every tensor once
    assert _num(rows[4]["MB read"]) < whole and _num(rows[5]["MB read"]) < whole  # a TP=2 rank reads its slices
