#!/usr/bin/env python
"""Launch configurations of the two Triton MFT kernels, each pass timed on its own.

Pass 1 (statistics) reads the student and teacher logits once: 2 x itemsize bytes per logit element.
Pass 2 (gradient) reads both again and writes the gradient: 3 x itemsize (timed into a separate buffer,
which moves the same bytes as the in-place write). For every (BLOCK, num_warps) the script checks the
pass's output against the default configuration's, and prints ms, GB/s and the share of the device's
copy bandwidth (measured in the same run); then the best configuration of each pass and the two-pass
time it implies. The defaults live in `nemo_mft.kernels.triton_backend` (STATS_*, GRAD_*).

    python benchmarks/tune_triton.py                                 # CUDA: bf16, N=16384, V=128256
    python benchmarks/tune_triton.py --vocab 256000 --json out.json
    TRITON_INTERPRET=1 python benchmarks/tune_triton.py --smoke      # CPU interpreter: the code path only
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loss import (Case, copy_case, copy_gbps, make_inputs, measure_copy_bandwidth,  # noqa: E402
                        render_table, time_ms)

from nemo_mft.kernels import triton_backend  # noqa: E402
from nemo_mft.loss import formulas  # noqa: E402
from nemo_mft.loss.backends import ShardLayout, TorchBackend  # noqa: E402

TAU, TEMPERATURE = 0.25, 1.0
STATS_CONFIGS = [(b, w) for b, w in itertools.product((2048, 4096, 8192, 16384), (4, 8, 16, 32))
                 if 4 <= b // (32 * w) <= 64]
GRAD_CONFIGS = [(b, w) for b, w in itertools.product((1024, 2048, 4096, 8192), (4, 8, 16))
                if 4 <= b // (32 * w) <= 64]
SMOKE_CONFIGS = [(64, 4), (128, 4)]


def sweep(pass_name: str, configs, run, check, device: str, warmup: int, repeats: int) -> list[dict]:
    """Time run() under each (BLOCK, num_warps) set on triton_backend; check() its output."""
    prefix = "STATS" if pass_name == "statistics" else "GRAD"
    defaults = (getattr(triton_backend, f"{prefix}_BLOCK"), getattr(triton_backend, f"{prefix}_NUM_WARPS"))
    rows = []
    try:
        for block, warps in configs:
            setattr(triton_backend, f"{prefix}_BLOCK", block)
            setattr(triton_backend, f"{prefix}_NUM_WARPS", warps)
            for _ in range(warmup):
                run()
            status = check(run())
            times = time_ms(run, lambda: None, device, repeats)
            rows.append(dict(pass_name=pass_name, block=block, num_warps=warps, ms=statistics.median(times),
                             status=status, default=(block, warps) == defaults))
    finally:
        setattr(triton_backend, f"{prefix}_BLOCK", defaults[0])
        setattr(triton_backend, f"{prefix}_NUM_WARPS", defaults[1])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and two configurations (CPU interpreter)")
    parser.add_argument("--json", type=Path, help="also write the rows and the best configurations here")
    args = parser.parse_args(argv)
    device = "cpu" if triton_backend.INTERPRETED else "cuda"
    if args.smoke:
        args.tokens, args.vocab, args.repeats = 4, 300, 1
    dtype = getattr(torch, args.dtype)
    stats_configs, grad_configs = (SMOKE_CONFIGS, SMOKE_CONFIGS) if args.smoke else (STATS_CONFIGS, GRAD_CONFIGS)

    bandwidth = copy_gbps(measure_copy_bandwidth(copy_case(args.dtype))) if device == "cuda" else None
    # The loss benchmark's inputs (one shard, TP=1); the passes need no autograd.
    student, teacher, labels = make_inputs(Case("triton", device, args.tokens, args.vocab, args.dtype, 0, 1))
    student = student.detach()
    layout = ShardLayout(offset=0, real_width=args.vocab)
    backend = triton_backend.TritonBackend(fallback=TorchBackend())

    def run_stats():
        return backend.statistics(student, teacher, labels, layout, TEMPERATURE, torch.float32)

    # The default configuration's outputs: the reference of every other configuration.
    ref_stats, ref_argmax = run_stats()
    targets = formulas.combine_statistics(ref_stats.unsqueeze(0), ref_argmax.unsqueeze(0), labels, TEMPERATURE, TAU,
                                          correct_all=True)
    coef = torch.full((args.tokens,), 1.0 / args.tokens, device=device)
    grad_out = torch.empty_like(student)
    ref_grad = backend.gradient(student, teacher, labels, layout, targets, coef, TEMPERATURE, dtype).clone()

    def check_stats(result):
        stats, argmax = result
        same = torch.equal(argmax, ref_argmax) and torch.allclose(stats, ref_stats, rtol=1e-5, atol=1e-6)
        return "ok" if same else "MISMATCH"

    def run_grad():
        return backend.gradient(student, teacher, labels, layout, targets, coef, TEMPERATURE, dtype, out=grad_out)

    def check_grad(grad):
        atol = 1e-6 * ref_grad.float().abs().max().item()
        return "ok" if torch.allclose(grad.float(), ref_grad.float(), rtol=2.0 ** -7, atol=atol) else "MISMATCH"

    warmup = 1 if args.smoke else 2
    rows = (sweep("statistics", stats_configs, run_stats, check_stats, device, warmup, args.repeats)
            + sweep("gradient", grad_configs, run_grad, check_grad, device, warmup, args.repeats))

    elements = args.tokens * args.vocab
    for row in rows:
        reads_writes = 2 if row["pass_name"] == "statistics" else 3
        row["gbps"] = reads_writes * dtype.itemsize * elements / (row["ms"] * 1e6)
        row["copy_fraction"] = None if bandwidth is None else row["gbps"] / bandwidth
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    print(f"Triton MFT kernels, one pass at a time: N={args.tokens} V={args.vocab} {args.dtype} on {name}; "
          f"torch {torch.__version__}, triton {triton_backend.triton.__version__}; median of {args.repeats}; "
          f"copy bandwidth {'n/a' if bandwidth is None else f'{bandwidth:.0f} GB/s'}.")
    headers = ["pass", "BLOCK", "num_warps", "ms", "GB/s", "% of copy BW", "output", "default"]
    table = [[r["pass_name"], str(r["block"]), str(r["num_warps"]), f"{r['ms']:.3f}", f"{r['gbps']:.0f}",
              "n/a" if r["copy_fraction"] is None else f"{r['copy_fraction']:.0%}", r["status"],
              "*" if r["default"] else ""] for r in rows]
    print(render_table(headers, table, markdown=True))

    best = {}
    for pass_name in ("statistics", "gradient"):
        valid = [r for r in rows if r["pass_name"] == pass_name and r["status"] == "ok"]
        if valid:
            best[pass_name] = min(valid, key=lambda r: r["ms"])
    if len(best) == 2:
        total = best["statistics"]["ms"] + best["gradient"]["ms"]
        share = "" if bandwidth is None else \
            f", {5 * dtype.itemsize * elements / (total * 1e6) / bandwidth:.0%} of the 10 B/elem roofline"
        print(f"best: statistics BLOCK={best['statistics']['block']} num_warps={best['statistics']['num_warps']}, "
              f"gradient BLOCK={best['gradient']['block']} num_warps={best['gradient']['num_warps']}: "
              f"{total:.3f} ms for both passes{share}")
    mismatches = [r for r in rows if r["status"] != "ok"]
    if args.json:
        args.json.write_text(json.dumps(dict(device=name, tokens=args.tokens, vocab=args.vocab, dtype=args.dtype,
                                             copy_gbps=bandwidth, rows=rows, best=best), indent=1))
    if mismatches:
        sys.exit(f"{len(mismatches)} configuration(s) gave a different result from the default")


if __name__ == "__main__":
    main()
