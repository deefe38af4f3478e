import json
import os

from nemo_mft.training.metrics_log import MetricsLog, plot_curves, read_records


def test_records_are_json_lines_and_resume_drops_the_interrupted_tail(tmp_path):
    log = MetricsLog(str(tmp_path), tensorboard=False)
    for it in range(1, 6):
        log.log({"iteration": it, "loss": 1.0 / it, "lr": 1e-3, "bad": float("nan")})
    log.close()
    records = read_records(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["bad"] is None  # NaN is written as null, the file stays valid JSON

    resumed = MetricsLog(str(tmp_path), tensorboard=False, resume_iteration=3)
    resumed.log({"iteration": 4, "loss": 0.3})
    resumed.close()
    assert [r["iteration"] for r in read_records(resumed.path)] == [1, 2, 3, 4]


def test_tensorboard_events_and_curves(tmp_path):
    log = MetricsLog(str(tmp_path), tensorboard=True)
    log.log({"iteration": 0, "spec_ppl": 20.0, "gen_ppl": 10.0, "S": 0.0, "DG": 0.0, "DG_over_S": None}, "eval")
    log.log({"iteration": 1, "loss": 2.0})
    log.log({"iteration": 2, "spec_ppl": 15.0, "gen_ppl": 10.5, "S": 5.0, "DG": 0.5, "DG_over_S": 0.1}, "eval")
    log.close()
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))
    out = tmp_path / "curves.png"
    plot_curves(log.path, str(out), title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(read_records(log.path))
