"""The paper's comparisons on the demo's corpora and base model: MFT against the forgetting baselines.

Every run starts from the demo's cached base model (pretrained once, see ``python -m nemo_mft.demo``) and
goes through the project's entry point with ``conf/demo_finetune.yaml``; only the objective, the domain
budget (``dataset.max_samples``) and the seed (``train.seed``: data subset, order and init of the run)
change. The number of epochs is held fixed across budgets (``train_iters`` scales with the budget), and
every run is scored on its final iterate on the held-out test sets (the same rule for all).

    python benchmarks/paper_repro.py --jobs 2 --threads 1                      # the whole sweep
    python benchmarks/paper_repro.py --budgets 500 --families ft,mft --seeds 1  # a part of it
    python benchmarks/paper_repro.py --table-only                               # the table of what ran

Configurations per (budget, seed), by family (``--families``):

- ``ft``: plain cross-entropy finetuning.
- ``kd``: distillation from the frozen base without correction (q = p; method ``kd``).
- ``mft``: MFT for each tau in ``--taus``.
- ``mft_incorrect_only``: MFT correcting only the rows the teacher gets wrong, at ``--io-tau``.
- ``kd_ce``: the constant-mix baseline (1 - alpha) KD + alpha CE for each alpha in ``--kd-ce-alphas``.
- ``l2``: FT with L2 to the initial weights, weight / 2 ||theta - theta_0||^2, for each ``--l2-weights``.
- ``replay``: FT and MFT (tau 0.25) with the general corpus' training split (the base model's
  pretraining text) mixed in as ``--replay-fraction`` of the training set.
- ``lora``: FT and MFT (tau 0.25) training only LoRA adapters (``peft.method=lora``, rank ``--lora-dim``,
  alpha 2 x rank, learning rate ``--lora-lr``; the MFT teacher is the base with the adapters off).

Not covered: replay of text *sampled from* the base model, EWC, DoRA/IA3.

Output: ``OUT/results.json`` (every run, with its evaluation trajectory; reruns skip what is there),
``OUT/table.md`` (mean and standard deviation over seeds) and the table on stdout. The last column is
FT's DG where FT's own trajectory (same budget and seed) reaches the configuration's final S, divided
by the configuration's DG: the "at comparable specialization" reading of the paper's claim.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_mft.demo.pipeline import PROFILES, ensure_base_model, finetune, prepare_data  # noqa: E402
from nemo_mft.demo.report import dg_at_s, read_eval_records  # noqa: E402

EPOCHS_AT_500 = 100 * 16 / 500  # the recipe: 100 iterations of 16 samples for 500 samples
FAMILIES = ("ft", "kd", "mft", "mft_incorrect_only", "kd_ce", "l2", "replay", "lora")


@dataclass(frozen=True)
class Config:
    name: str
    family: str
    method: str
    overrides: tuple[str, ...] = ()


def configs(args, replay_data: Path) -> list[Config]:
    out = [Config("ft", "ft", "ft"), Config("kd", "kd", "kd")]
    out += [Config(f"mft tau={tau:g}", "mft", "mft", (f"mft.tau={tau}",)) for tau in args.taus]
    if args.io_tau is not None:
        out.append(Config(f"mft_incorrect_only tau={args.io_tau:g}", "mft_incorrect_only", "mft_incorrect_only",
                          (f"mft.tau={args.io_tau}",)))
    out += [Config(f"kd_ce alpha={a:g}", "kd_ce", "kd_ce", (f"mft.kd_ce_alpha={a}",)) for a in args.kd_ce_alphas]
    out += [Config(f"ft + l2_init={w:g}", "l2", "ft", (f"mft.l2_init_weight={w}",)) for w in args.l2_weights]
    replay = (f"dataset.replay_data={replay_data}", f"dataset.replay_fraction={args.replay_fraction}")
    out += [Config(f"ft + replay {args.replay_fraction:g}", "replay", "ft", replay),
            Config(f"mft tau=0.25 + replay {args.replay_fraction:g}", "replay", "mft", ("mft.tau=0.25", *replay))]
    lora = ("peft.method=lora", f"peft.dim={args.lora_dim}", f"peft.alpha={2 * args.lora_dim}",
            f"optimizer.lr={args.lora_lr}")
    out += [Config(f"lora r={args.lora_dim} ft", "lora", "ft", lora),
            Config(f"lora r={args.lora_dim} mft tau=0.25", "lora", "mft", ("mft.tau=0.25", *lora))]
    return [c for c in out if c.family in args.families]


def _stats(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd, len(values)


def _cell(values, digits=2):
    mean, sd, n = _stats(values)
    if mean is None:
        return "n/a"
    spread = f" ± {sd:.{digits}f}" if n > 1 else ""  # one run has no spread to show
    return f"{mean:.{digits}f}{spread}" + ("" if n == len(values) else f" ({n}/{len(values)})")


def matched_ratio(run: dict, ft_run: dict | None):
    """FT's DG at this run's final S (interpolated on FT's trajectory) over this run's DG, or None."""
    s, dg = run["final"].get("S"), run["final"].get("DG")
    if ft_run is None or s is None or dg is None or s <= 0 or dg <= 0:
        return None
    ft_dg = dg_at_s(ft_run["evals"], s)
    return None if ft_dg is None else ft_dg / dg


def table(results: list[dict]) -> str:
    """Markdown table of every stored run, grouped by (budget, configuration); rows in the order of
    FAMILIES, then by name (so tau and alpha ascend), whichever subset of the grid an invocation ran."""
    lines = ["| budget | configuration | runs | domain PPL | general PPL | S | DG | DG/S | FT DG at same S / DG |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    family_rank = {family: i for i, family in enumerate(FAMILIES)}
    keys = sorted({(r["budget"], family_rank[r["family"]], r["name"]) for r in results})
    ft = {(r["budget"], r["seed"]): r for r in results if r["name"] == "ft"}
    for budget, _, name in keys:
        group = [r for r in results if r["budget"] == budget and r["name"] == name]
        f = [r["final"] for r in group]
        ratios = [matched_ratio(r, ft.get((budget, r["seed"]))) for r in group] if name != "ft" else []
        lines.append(f"| {budget} | {name} | {len(group)} | {_cell([x['spec_ppl'] for x in f])} | "
                     f"{_cell([x['gen_ppl'] for x in f])} | {_cell([x['S'] for x in f])} | "
                     f"{_cell([x['DG'] for x in f])} | {_cell([x['DG_over_S'] for x in f], 3)} | "
                     f"{_cell(ratios) if ratios else '-'} |")
    base_gen = sorted({round(r["base"]["gen_ppl"], 2) for r in results})
    base_spec = sorted({round(r["base"]["spec_ppl"], 2) for r in results})
    lines.append(f"\nBase model: general PPL {', '.join(map(str, base_gen))}; domain PPL "
                 f"{', '.join(map(str, base_spec))} (the scored domain passages are a seed-dependent subset of the "
                 "test split). Mean ± standard deviation over seeds (a single run: its value alone); a count in "
                 "parentheses is the number of runs where the value exists (DG/S needs S > 0; the last column needs "
                 "FT's trajectory to reach that S).")
    return "\n".join(lines)


def write_table(results: list[dict], out: Path) -> None:
    """Write ``out/table.md`` and print the same table."""
    text = table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    print(text)


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="500,2000")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"subset of {','.join(FAMILIES)}")
    parser.add_argument("--taus", type=_floats, default=_floats("0.05,0.1,0.25,0.5"))
    parser.add_argument("--io-tau", type=float, default=0.25, help="tau of mft_incorrect_only")
    parser.add_argument("--kd-ce-alphas", type=_floats, default=_floats("0.25,0.5"))
    parser.add_argument("--l2-weights", type=_floats, default=_floats("0.1,1.0"))
    parser.add_argument("--replay-fraction", type=float, default=0.2)
    parser.add_argument("--lora-dim", type=int, default=16, help="LoRA rank of the lora family (alpha = 2 x rank)")
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of the lora family")
    parser.add_argument("--cache", default="demo_out/cache", help="the demo's cache (base model, data)")
    parser.add_argument("--out", default="benchmarks/paper_repro_out")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (their output goes to log files)")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: print and write the table of what results.json holds")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every finetuning run")
    args = parser.parse_args(argv)
    args.families = set(args.families.split(","))
    unknown = args.families - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    cache, out = Path(args.cache), Path(args.out)
    results_path = out / "results.json"
    if args.table_only:
        if not results_path.is_file():
            parser.error(f"--table-only: no {results_path}")
        write_table(json.loads(results_path.read_text()), out)
        return 0

    profile = PROFILES["full"]
    paths = prepare_data(cache, profile)
    base = ensure_base_model(cache, paths, profile)
    grid = configs(args, paths.corpora / "general" / "training.jsonl")
    budgets = [int(b) for b in args.budgets.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",") if s]

    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["budget"], r["name"], r["seed"], tuple(r["overrides"])) for r in results}
    todo = [(budget, seed, config) for budget in budgets for seed in seeds for config in grid
            if (budget, config.name, seed, tuple(args.overrides)) not in done]
    lock = threading.Lock()
    t0 = time.time()

    def run(budget: int, seed: int, config: Config) -> None:
        iters = max(1, round(EPOCHS_AT_500 * budget / 16))
        overrides = [f"train.seed={seed}", f"train.train_iters={iters}", f"evaluation.eval_interval={max(1, iters // 5)}",
                     *config.overrides, *args.overrides]
        sized = dataclasses.replace(profile, samples=budget)
        slug = config.name.replace(" + ", "+").replace(" ", "_").replace("=", "")
        log_dir = out / "runs" / f"b{budget}" / slug / f"seed{seed}"
        print(f"[repro] start budget {budget} seed {seed} {config.name}: {iters} iterations", flush=True)
        summary = finetune(config.method, log_dir, paths, base, sized, extra_overrides=overrides, quiet=args.jobs > 1)
        evals = [{k: r.get(k) for k in ("iteration", "S", "DG")} for r in read_eval_records(log_dir / "metrics.jsonl")]
        record = {"budget": budget, "name": config.name, "family": config.family, "method": config.method,
                  "seed": seed, "iterations": iters, "config_overrides": list(config.overrides),
                  "overrides": list(args.overrides), "base": summary["base"], "final": summary["final"],
                  "evals": evals, "wall_s": summary["wall_s"]}
        with lock:
            results.append(record)
            out.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"[repro] done  budget {budget} seed {seed} {config.name} in {summary['wall_s']:.0f} s "
                  f"({len(results)} runs stored, {time.time() - t0:.0f} s so far)", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(run, *item) for item in todo]:
            future.result()
    print()
    write_table(results, out)
    print(f"\n[repro] {len(results)} runs in {results_path}; this invocation took {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
