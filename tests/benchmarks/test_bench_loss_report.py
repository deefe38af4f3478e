"""benchmarks/bench_loss.py's CUDA report (roofline share, memory share, speed-up and their targets) on
made-up results with known answers: the GPU run must not be the first time this code executes."""

import json

import pytest

from bench_scripts import load_script

N, V = 16384, 128256
LOGIT_BYTES = N * V * 2  # bf16


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_loss")


def _result(bench, method, v, time_ms, extra_bytes, loss=1.0, status="ok"):
    case = bench.Case(method, "cuda", N, v, "bfloat16", warmup=1, repeats=1)
    return bench.Result(case, status=status, time_ms=time_ms, extra_bytes=extra_bytes, loss=loss)


def _copy_at(bench, gbps):
    case = bench.copy_case("bfloat16")
    time_ms = 2 * case.n * case.v * 2 / (gbps * 1e6)
    return bench.Result(case, time_ms=time_ms, note="Test GPU")


def test_cuda_report_derives_bandwidth_memory_and_speedup_targets(bench):
    ten_bytes_ms = 10 * N * V / (4000 * 1e6)  # time at which the loss moves 10 B/elem at 4000 GB/s
    results = [
        _result(bench, "triton", V, ten_bytes_ms / 0.9, extra_bytes=int(0.005 * LOGIT_BYTES)),  # 90%, 0.5%
        _result(bench, "torch", V, 40.0, extra_bytes=LOGIT_BYTES, loss=1.0 + 1e-6),
        _result(bench, "modelopt", V, 20 * ten_bytes_ms / 0.9, extra_bytes=10 * LOGIT_BYTES),  # 20x slower
        _result(bench, "triton", 256000, 10 * N * 256000 / (4000 * 1e6) / 0.5, extra_bytes=0),  # 50%
        _result(bench, "modelopt", 256000, None, None, loss=None, status="OOM"),
    ]
    report = bench.Report(results, "cuda", _copy_at(bench, 4000))
    assert report.copy_gbps == pytest.approx(4000)
    assert report.roofline_fraction(results[0]) == pytest.approx(0.9)
    assert report.time_ratio(results[0]) == pytest.approx(0.05)

    targets = report.targets()
    assert targets[0].startswith("[met ]") and targets[0].endswith("90%"), targets
    assert targets[1].startswith("[met ]") and targets[1].endswith("0.50%"), targets
    assert targets[2].startswith("[MISS]") and targets[2].endswith("50%"), targets  # V=256000 at 50%
    assert targets[3].startswith("[met ]") and targets[3].endswith("0.00%"), targets
    # The speed-up is judged where ModelOpt last fitted (V=128256), not where it ran out of memory.
    assert "N=16384 V=128256" in targets[4] and targets[4].startswith("[met ]") and targets[4].endswith("20.0")

    table = report.table(markdown=True).splitlines()
    assert table[0].endswith("| GB/s (10 B/elem) | % of copy BW |")
    triton_row = [c.strip() for c in table[2].strip("|").split("|")]
    assert triton_row[0] == "nemo-mft triton" and triton_row[-1] == "90%" and triton_row[-2] == "3600"
    oom_row = [c.strip() for c in table[-1].strip("|").split("|")]
    assert oom_row[4] == "OOM"
    notes = report.notes()
    assert "device-to-device copy bandwidth (Test GPU): 4000 GB/s" in notes
    assert notes[-1] == "loss agreement with ModelOpt: max relative difference 1.0e-06"


def test_missing_measurements_are_reported_as_not_measured(bench):
    report = bench.Report([_result(bench, "triton", V, None, None, status="error")], "cuda", None)
    assert all(line.startswith("[n/a ]") for line in report.targets())


def test_json_keeps_every_case_as_it_completes(bench, tmp_path, monkeypatch):
    """--json is rewritten after each case, so a run stopped early keeps what it measured."""
    seen = []

    def fake_run_case(case, timeout_s):
        if (tmp_path / "raw.json").exists():
            seen.append(len(json.loads((tmp_path / "raw.json").read_text())["results"]))
        return bench.Result(case, time_ms=1.0, extra_bytes=0, loss=1.0)

    monkeypatch.setattr(bench, "run_case", fake_run_case)
    bench.main(["--tokens", "8", "--vocab", "64,128", "--methods", "torch", "--json", str(tmp_path / "raw.json")])
    data = json.loads((tmp_path / "raw.json").read_text())
    assert seen == [1] and [r["case"]["v"] for r in data["results"]] == [64, 128] and data["copy"] is None
