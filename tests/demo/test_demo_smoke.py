"""The demo pipeline end to end with a tiny model (the `--smoke` profile), through the real entry point.

Runs on small corpora made here in the corpora's on-disk layout, so it needs no Debian package; the real
corpora are covered by test_demo_corpora.py (when installed) and by `make demo`.
"""

import json
import math

from nemo_mft.demo.corpora import prepare_corpora
from nemo_mft.demo.report import read_eval_records
from nemo_mft.demo.run import main


def _make_corpora(tmp_path):
    fortune_dir = tmp_path / "fortunes"
    fortune_dir.mkdir()
    topics = ["people", "science", "work", "food"]
    words = ("the a man woman said would never always time work food house dog cat city river "
             "money friend science idea book night day good bad old new small great").split()
    for t, topic in enumerate(topics):
        entries = []
        for i in range(150):
            sent = " ".join(words[(i * 7 + j * (t + 3)) % len(words)] for j in range(12 + i % 9))
            entries.append(f"{sent.capitalize()}.\n        -- Author {i % 13}")
        (fortune_dir / topic).write_text("\n%\n".join(entries) + "\n%\n")
    verses = "and it came to pass that the lord spake unto moses saying thou shalt not".split()
    chapters = [(f"Ge{c}", [" ".join(verses[(c + v + k) % len(verses)] for k in range(14)).capitalize() + "."
                            for v in range(25)]) for c in range(1, 61)]
    out = tmp_path / "corpora"
    prepare_corpora(out, fortune_dir=fortune_dir, kjv_chapters=chapters, passage_chars=200)
    return out


def test_demo_smoke_end_to_end(tmp_path):
    corpora = _make_corpora(tmp_path)
    out = tmp_path / "demo"
    assert main(["--smoke", "--out", str(out), "--corpora-dir", str(corpora)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("base", "ft", "mft"):
        for key in ("spec_ppl", "gen_ppl", "S", "DG"):
            assert math.isfinite(summary[name][key]), (name, key, summary[name][key])
    assert summary["base"]["spec_ppl"] - summary["ft"]["spec_ppl"] == summary["ft"]["S"] or \
        math.isclose(summary["base"]["spec_ppl"] - summary["ft"]["spec_ppl"], summary["ft"]["S"], rel_tol=1e-6)
    assert summary["base_check"]["max_abs_difference_between_runs"] < 1e-3
    assert (out / "curves.png").stat().st_size > 10_000
    assert "| MFT |" in (out / "table.md").read_text()
    for method in ("ft", "mft"):
        assert len(read_eval_records(out / "runs" / method / "metrics.jsonl")) >= 2
    assert summary["settings"]["base_reused"] is False

    # Second run: the base model comes from the cache.
    assert main(["--smoke", "--out", str(out), "--corpora-dir", str(corpora), "--methods", "mft"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["settings"]["base_reused"] is True
    assert math.isclose(again["mft"]["spec_ppl"], summary["mft"]["spec_ppl"], rel_tol=1e-4)


def test_unknown_method_is_refused_before_anything_runs(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", "--out", str(tmp_path / "demo"), "--methods", "ft,lora"])
    assert exit_info.value.code == 2
    assert "--methods: lora; choose from mft, ft, kd, mft_incorrect_only, kd_ce" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
