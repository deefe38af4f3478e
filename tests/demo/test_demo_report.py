import json
import math

from nemo_mft.demo.report import combine_summaries, compare_at_matched_s, dg_at_s, format_table


def _summary(spec, gen, s, dg):
    return {"base": {"spec_ppl": 100.0, "gen_ppl": 50.0},
            "final": {"spec_ppl": spec, "gen_ppl": gen, "S": s, "DG": dg, "DG_over_S": dg / s if s > 0 else None},
            "iterations": 10, "train_time_s": 1.0}


def test_combine_and_table():
    combined = combine_summaries({"ft": _summary(60.0, 60.0, 40.0, 10.0), "mft": _summary(80.0, 51.0, 20.0, 1.0)})
    assert combined["base"]["spec_ppl"] == 100.0 and combined["ft"]["DG_over_S"] == 0.25
    assert combined["base_check"]["max_abs_difference_between_runs"] == 0.0
    table = format_table(combined, ["ft", "mft"])
    assert "| FT | 60.00 | 60.00 | 40.00 | 10.00 | 0.250 |" in table
    assert "| MFT | 80.00 | 51.00 | 20.00 | 1.00 | 0.050 |" in table
    combined["mft"]["DG_over_S"] = None
    assert "| n/a |" in format_table(combined, ["ft", "mft"])


def test_dg_at_matched_s(tmp_path):
    recs = [{"S": 0.0, "DG": 0.0}, {"S": 10.0, "DG": 2.0}, {"S": 20.0, "DG": 6.0}]
    assert dg_at_s(recs, 15.0) == 4.0
    assert dg_at_s(recs, 0.0) == 0.0
    assert dg_at_s(recs, 25.0) is None
    dirs = {}
    for method, rows in (("ft", recs), ("mft", [{"S": 0.0, "DG": 0.0}, {"S": 15.0, "DG": 1.0}])):
        dirs[method] = tmp_path / method
        dirs[method].mkdir()
        with open(dirs[method] / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"iteration": 1, "loss": 3.0}) + "\n")
            for i, r in enumerate(rows):
                f.write(json.dumps({"iteration": i * 5, "spec_ppl": 1.0, "gen_ppl": 1.0, **r}) + "\n")
    matched = compare_at_matched_s(dirs)
    assert matched["S"] == 15.0 and matched["mft_DG"] == 1.0
    assert math.isclose(matched["ft_DG_at_same_S"], 4.0) and math.isclose(matched["ft_over_mft_DG_ratio"], 4.0)
