"""The demo's outputs: the comparison table, summary.json and curves.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["KEYS", "format_table", "read_eval_records", "plot_curves", "combine_summaries", "dg_at_s",
           "compare_at_matched_s"]

KEYS = ("spec_ppl", "gen_ppl", "S", "DG", "DG_over_S")
LABELS = {"base": "base", "ft": "FT", "mft": "MFT", "kd": "KD (q = p)", "mft_incorrect_only": "MFT incorrect-only",
          "kd_ce": "KD+CE"}


def _fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def combine_summaries(runs: dict[str, dict]) -> dict:
    """``{"base": {...}, method: {...}}`` from the entry point's per-run summary.json files.

    The base numbers come from the first run (every run evaluates the same frozen start on the same
    sets before its first step); ``base_check`` records the largest disagreement between runs.
    """
    if not runs:
        raise ValueError("no runs to combine")
    first = next(iter(runs.values()))
    base = {"spec_ppl": first["base"]["spec_ppl"], "gen_ppl": first["base"]["gen_ppl"],
            "S": 0.0, "DG": 0.0, "DG_over_S": None}
    spread = max(abs(r["base"][k] - base[k]) for r in runs.values() for k in ("spec_ppl", "gen_ppl"))
    out: dict = {"base": base}
    for method, summary in runs.items():
        out[method] = {k: summary["final"].get(k) for k in KEYS}
        out[method]["train_time_s"] = summary.get("train_time_s")
        out[method]["iterations"] = summary.get("iterations")
    out["base_check"] = {"max_abs_difference_between_runs": spread}
    return out


def format_table(summary: dict, methods: Sequence[str]) -> str:
    """A Markdown table: rows base + methods, columns domain PPL, general PPL, S, DG, DG/S."""
    lines = ["| model | domain PPL (test) | general PPL (test) | S | DG | DG/S |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("base", *methods):
        row = summary[name]
        ratio = "-" if name == "base" else _fmt(row.get("DG_over_S"), 3)
        s = "-" if name == "base" else _fmt(row["S"])
        dg = "-" if name == "base" else _fmt(row["DG"])
        lines.append(f"| {LABELS.get(name, name)} | {_fmt(row['spec_ppl'])} | {_fmt(row['gen_ppl'])} | {s} | {dg} | {ratio} |")
    return "\n".join(lines)


def read_eval_records(metrics_path: Path) -> list[dict]:
    """The evaluation records (those with ``spec_ppl``) of a run's metrics.jsonl, in order."""
    records = []
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if "spec_ppl" in rec and "iteration" in rec:
                    records.append(rec)
    return records


def plot_curves(run_dirs: dict[str, Path], out_path: Path, title: str = "") -> None:
    """S and DG over iterations, and general vs domain perplexity along each run, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for method, run_dir in run_dirs.items():
        recs = read_eval_records(Path(run_dir) / "metrics.jsonl")
        if not recs:
            continue
        it = [r["iteration"] for r in recs]
        label = LABELS.get(method, method)
        axes[0].plot(it, [r.get("S") for r in recs], marker="o", label=label)
        axes[1].plot(it, [r.get("DG") for r in recs], marker="o", label=label)
        axes[2].plot([r.get("spec_ppl") for r in recs], [r.get("gen_ppl") for r in recs], marker="o", label=label)
        axes[2].annotate(str(it[-1]), (recs[-1].get("spec_ppl"), recs[-1].get("gen_ppl")), fontsize=8)
    axes[0].set(xlabel="iteration", ylabel="S = PPL_spec(base) - PPL_spec", title="specialization (higher is better)")
    axes[1].set(xlabel="iteration", ylabel="DG = PPL_gen - PPL_gen(base)", title="degeneralization (lower is better)")
    axes[2].set(xlabel="domain PPL (log)", ylabel="general PPL", xscale="log",
                title="trade-off per evaluation (lower left is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def dg_at_s(records: Sequence[dict], s_target: float) -> Optional[float]:
    """DG where a run's trajectory first reaches specialization ``s_target``, linearly interpolated
    between the two evaluations around the crossing; ``None`` if the run never gets there."""
    points = [(r.get("S"), r.get("DG")) for r in records]
    points = [(s, d) for s, d in points if s is not None and d is not None]
    for (s0, d0), (s1, d1) in zip(points, points[1:]):
        if s0 <= s_target <= s1 and s1 > s0:
            return d0 + (d1 - d0) * (s_target - s0) / (s1 - s0)
    if points and math.isclose(points[0][0], s_target):
        return points[0][1]
    return None


def compare_at_matched_s(run_dirs: dict[str, Path], reference: str = "mft", other: str = "ft") -> Optional[dict]:
    """DG/S of ``reference``'s final iterate against ``other``'s at the same S (from ``other``'s
    evaluation trajectory): the "comparable specialization" reading of the paper's claim."""
    if reference not in run_dirs or other not in run_dirs:
        return None
    ref = read_eval_records(Path(run_dirs[reference]) / "metrics.jsonl")
    oth = read_eval_records(Path(run_dirs[other]) / "metrics.jsonl")
    if not ref or not oth:
        return None
    s_ref, dg_ref = ref[-1].get("S"), ref[-1].get("DG")
    if s_ref is None or dg_ref is None or s_ref <= 0:
        return {"S": s_ref, f"{reference}_DG": dg_ref, f"{other}_DG_at_same_S": None, "DG_ratio": None}
    dg_other = dg_at_s(oth, s_ref)
    ratio = dg_other / dg_ref if dg_other is not None and dg_ref > 0 else None
    return {"S": s_ref, f"{reference}_DG": dg_ref, f"{other}_DG_at_same_S": dg_other,
            f"{other}_over_{reference}_DG_ratio": ratio}
