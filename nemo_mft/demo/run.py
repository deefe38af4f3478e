"""``python -m nemo_mft.demo``: FT vs MFT on real data, end to end, on a CPU.

1. Corpora from Debian packages (general: ``fortunes``; domain: the King James Bible), split by document.
2. A byte-level BPE tokenizer trained on the two training splits.
3. A small megatron-core GPT pretrained on the general corpus with ``conf/demo_pretrain.yaml``, once: the
   checkpoint is cached and reused while its configuration hash is unchanged.
4. From that base model, ``ft`` and ``mft`` with ``conf/demo_finetune.yaml``: 500 domain passages, the
   same budget, seed, data subset and selection rule (the final iterate) for both.
5. A table (domain and general test perplexity, S, DG, DG/S), ``OUT/summary.json`` and ``OUT/curves.png``.

``--smoke`` runs a tiny model for a few iterations (CI): it checks the pipeline, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from nemo_mft.demo.corpora import CorpusUnavailable
from nemo_mft.demo.pipeline import PROFILES, RunFailed, ensure_base_model, finetune, prepare_data, profile_dict
from nemo_mft.demo.report import combine_summaries, compare_at_matched_s, format_table, plot_curves
from nemo_mft.methods import METHODS

__all__ = ["main", "run_demo"]


def run_demo(out: Path, *, cache: Optional[Path] = None, smoke: bool = False, methods: Sequence[str] = ("ft", "mft"),
             force_pretrain: bool = False, corpora_dir: Optional[Path] = None,
             finetune_overrides: Sequence[str] = ()) -> dict:
    """The whole demo; returns what it writes to ``out/summary.json``."""
    t_start = time.time()
    profile = PROFILES["smoke" if smoke else "full"]
    out = Path(out)
    cache = Path(cache) if cache is not None else out / "cache"
    paths = prepare_data(cache, profile, corpora_dir=corpora_dir)
    base = ensure_base_model(cache, paths, profile, force=force_pretrain)

    runs, run_dirs = {}, {}
    for method in methods:
        print(f"[demo] finetuning with method {method} ({profile.samples} domain samples)", flush=True)
        run_dirs[method] = out / "runs" / method
        runs[method] = finetune(method, run_dirs[method], paths, base, profile, extra_overrides=finetune_overrides)

    summary = combine_summaries(runs)
    summary["matched_S"] = compare_at_matched_s(run_dirs)
    summary["settings"] = {
        "profile": profile_dict(profile),
        "methods": list(methods),
        "finetune_overrides": list(finetune_overrides),
        "base_checkpoint": base["checkpoint"],
        "base_reused": base["reused"],
        "base_train_time_s": base.get("train_time_s"),
        "finetune_wall_s": {m: r["wall_s"] for m, r in runs.items()},
        "total_wall_s": time.time() - t_start,
        "evaluation": "domain PPL on held-out Bible chapters (domain/test.jsonl); general PPL on held-out "
                      "fortunes (general/test.jsonl); final iterate of each run",
        "corpora": {k: paths.manifest.get(k, {}).get("source") for k in ("general", "domain")},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curves(run_dirs, out / "curves.png",
                title=f"{profile.samples} domain samples, {profile.name} profile")
    table = format_table(summary, methods)
    (out / "table.md").write_text(table + "\n")
    print("\n" + table + "\n", flush=True)
    matched = summary["matched_S"]
    if matched and matched.get("ft_DG_at_same_S") is not None:
        print(f"[demo] at MFT's final S = {matched['S']:.2f}: MFT DG {matched['mft_DG']:.2f}, FT DG (interpolated on "
              f"its trajectory) {matched['ft_DG_at_same_S']:.2f}", flush=True)
    print(f"[demo] wrote {out / 'summary.json'}, {out / 'curves.png'} and {out / 'table.md'} "
          f"in {summary['settings']['total_wall_s']:.0f} s", flush=True)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nemo_mft.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output directory (default: demo_out, or demo_out_smoke)")
    parser.add_argument("--cache", default=None, help="cache directory (default: OUT/cache)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few iterations (CI)")
    parser.add_argument("--methods", default="ft,mft", help=f"comma-separated methods, of {', '.join(METHODS)}")
    parser.add_argument("--force-pretrain", action="store_true", help="retrain the base model even if cached")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of the training runs (OMP_NUM_THREADS); 1 is faster on a busy machine")
    parser.add_argument("--corpora-dir", default=None, help="use these prepared corpora instead of the Debian ones")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the finetuning runs, e.g. mft.tau=0.1")
    args = parser.parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the entry point's processes
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: {', '.join(unknown) or 'none given'}; choose from {', '.join(METHODS)}")
    out = Path(args.out or ("demo_out_smoke" if args.smoke else "demo_out"))
    try:
        run_demo(out, cache=Path(args.cache) if args.cache else None, smoke=args.smoke,
                 methods=methods, force_pretrain=args.force_pretrain,
                 corpora_dir=Path(args.corpora_dir) if args.corpora_dir else None,
                 finetune_overrides=args.overrides)
    except CorpusUnavailable as err:
        print(f"[demo] error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"[demo] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
