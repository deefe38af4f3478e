"""benchmarks/paper_repro.py: the configuration grid and the table's matched-S column (no training here)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench_scripts import load_script


@pytest.fixture(scope="module")
def repro():
    return load_script("paper_repro")


def _args(repro, families=None):
    return SimpleNamespace(taus=[0.05, 0.25], io_tau=0.25, kd_ce_alphas=[0.25, 0.5], l2_weights=[0.1],
                           replay_fraction=0.2, lora_dim=8, lora_lr=1e-3, families=set(families or repro.FAMILIES))


def test_grid_covers_every_baseline_with_its_overrides(repro):
    grid = {c.name: c for c in repro.configs(_args(repro), Path("/g.jsonl"))}
    assert list(grid) == ["ft", "kd", "mft tau=0.05", "mft tau=0.25", "mft_incorrect_only tau=0.25",
                          "kd_ce alpha=0.25", "kd_ce alpha=0.5", "ft + l2_init=0.1", "ft + replay 0.2",
                          "mft tau=0.25 + replay 0.2", "lora r=8 ft", "lora r=8 mft tau=0.25"]
    assert grid["kd_ce alpha=0.25"].method == "kd_ce" and grid["kd_ce alpha=0.25"].overrides == ("mft.kd_ce_alpha=0.25",)
    assert grid["ft + l2_init=0.1"].method == "ft" and grid["ft + l2_init=0.1"].overrides == ("mft.l2_init_weight=0.1",)
    assert grid["mft tau=0.25 + replay 0.2"].overrides == (
        "mft.tau=0.25", "dataset.replay_data=/g.jsonl", "dataset.replay_fraction=0.2")
    lora = ("peft.method=lora", "peft.dim=8", "peft.alpha=16", "optimizer.lr=0.001")
    assert grid["lora r=8 ft"].method == "ft" and grid["lora r=8 ft"].overrides == lora
    assert grid["lora r=8 mft tau=0.25"].method == "mft" and grid["lora r=8 mft tau=0.25"].overrides == (
        "mft.tau=0.25", *lora)
    only = repro.configs(_args(repro, {"ft", "kd_ce"}), Path("/g.jsonl"))
    assert [c.family for c in only] == ["ft", "kd_ce", "kd_ce"]


def _run(name, seed, s, dg, evals=(), family=None, budget=500):
    return {"budget": budget, "name": name, "family": family or name.split()[0], "seed": seed,
            "base": {"spec_ppl": 1000.0, "gen_ppl": 100.0},
            "final": {"spec_ppl": 1000.0 - s, "gen_ppl": 100.0 + dg, "S": s, "DG": dg, "DG_over_S": dg / s},
            "evals": list(evals)}


def test_matched_s_column_interpolates_on_ft_trajectory(repro):
    ft = _run("ft", 1, 900.0, 150.0, [{"S": 0.0, "DG": 0.0}, {"S": 800.0, "DG": 80.0}, {"S": 900.0, "DG": 150.0}])
    mft = _run("mft tau=0.25", 1, 850.0, 23.0)
    # FT reaches S=850 halfway between its evaluations at S=800 (DG 80) and S=900 (DG 150): DG 115.
    assert repro.matched_ratio(mft, ft) == pytest.approx(115.0 / 23.0)
    assert repro.matched_ratio(_run("x", 1, 950.0, 10.0), ft) is None  # FT never gets there
    assert repro.matched_ratio(mft, None) is None
    text = repro.table([mft, ft])  # FT's row first whatever the order of the runs
    rows = [line for line in text.splitlines() if line.startswith("| 500")]
    assert rows[0].startswith("| 500 | ft | 1 |") and rows[0].endswith("| - |")
    assert rows[1].startswith("| 500 | mft tau=0.25 | 1 | 150.00 | 123.00 | 850.00 |")
    assert rows[1].endswith(f"| {115.0 / 23.0:.2f} |")


def test_table_shows_mean_and_spread_over_seeds(repro):
    runs = [_run("ft", 1, 900.0, 150.0), _run("ft", 2, 800.0, 130.0)]
    row = next(line for line in repro.table(runs).splitlines() if line.startswith("| 500"))
    assert row.startswith("| 500 | ft | 2 | 150.00 ± 70.71 | 240.00 ± 14.14 | 850.00 ± 70.71 | 140.00 ± 14.14 |")


def test_table_rows_follow_the_families_then_names_whatever_ran_last(repro):
    """A sweep of one family appends its runs at the end of results.json; the table keeps its order."""
    runs = [_run("kd_ce alpha=0.5", 1, 900.0, 30.0, budget=2000), _run("ft + l2_init=1", 1, 880.0, 15.0, family="l2"),
            _run("mft tau=0.5", 1, 960.0, 43.0), _run("kd_ce alpha=0.25", 1, 860.0, 11.0), _run("ft", 1, 990.0, 145.0),
            _run("mft tau=0.05", 1, 900.0, 17.0), _run("ft", 1, 1030.0, 380.0, budget=2000)]
    rows = [line.split(" | ")[:2] for line in repro.table(runs).splitlines() if line.startswith("| 500")
            or line.startswith("| 2000")]
    assert rows == [["| 500", "ft"], ["| 500", "mft tau=0.05"], ["| 500", "mft tau=0.5"],
                    ["| 500", "kd_ce alpha=0.25"], ["| 500", "ft + l2_init=1"],
                    ["| 2000", "ft"], ["| 2000", "kd_ce alpha=0.5"]]


def test_table_only_runs_nothing_and_writes_the_table(repro, tmp_path, capsys):
    runs = [_run("ft", 1, 900.0, 150.0), _run("mft tau=0.25", 1, 850.0, 23.0)]
    (tmp_path / "results.json").write_text(json.dumps(runs))
    # --cache points at a missing folder: building data or a base model would create it.
    assert repro.main(["--table-only", "--out", str(tmp_path), "--cache", str(tmp_path / "absent")]) == 0
    assert not (tmp_path / "absent").exists()
    written = (tmp_path / "table.md").read_text()
    assert "| 500 | mft tau=0.25 | 1 |" in written and written.strip() in capsys.readouterr().out
    with pytest.raises(SystemExit):
        repro.main(["--table-only", "--out", str(tmp_path / "empty")])
