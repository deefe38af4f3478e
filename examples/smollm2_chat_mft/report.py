#!/usr/bin/env python3
"""The example's table: base / FT / MFT (domain PPL, general PPL, S, DG, DG/S) from WORK/{ft,mft}/log, and S and DG
at every evaluation of both runs; writes WORK/summary.json.

    python report.py WORK [--title TEXT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nemo_mft.demo.report import combine_summaries, format_table, read_eval_records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--title", default=None, help="printed above the table")
    args = parser.parse_args(argv)
    work = args.work
    runs = {m: json.loads((work / m / "log" / "summary.json").read_text()) for m in ("ft", "mft")}
    summary = combine_summaries(runs)
    curves = {m: read_eval_records(work / m / "log" / "metrics.jsonl") for m in runs}
    summary["trajectory"] = {m: [{k: r.get(k) for k in ("iteration", "spec_ppl", "gen_ppl", "S", "DG")} for r in recs]
                             for m, recs in curves.items()}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.title:
        print(args.title)
    print(format_table(summary, ["ft", "mft"]))
    print("S = domain PPL(base) - domain PPL, DG = general PPL - general PPL(base); "
          + ", ".join(f"{m}: {r['iterations']} iterations in {r['train_time_s']:.0f} s" for m, r in runs.items()))
    if len(curves["ft"]) > 2:
        print("\nalong the runs (evaluations):\n| iteration | FT S | FT DG | MFT S | MFT DG |\n"
              "| ---: | ---: | ---: | ---: | ---: |")
        for a, b in zip(curves["ft"], curves["mft"]):
            print(f"| {a['iteration']} | {a['S']:.2f} | {a['DG']:.2f} | {b['S']:.2f} | {b['DG']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
