#!/usr/bin/env python
"""Time and peak host memory of the streaming HF import (`nemo_mft.hf.load_hf_into`) against anchors
measured in the same run: a plain `safetensors.torch.load_file` of the checkpoint and transformers'
`from_pretrained`. load_file memory-maps the file and returns tensors whose pages are read only when touched,
so it has two rows: "load_file + copy" (every tensor cloned: every byte read into private memory, the anchor
of the ratio columns) and "load_file (lazy mmap)" (nothing read; shown to make that visible).

Default checkpoint: the real SmolLM2-135M-Instruct fixture (fp32, 538 MB; tests/fixtures/smollm2.py). Every
measurement runs in fresh processes (this script re-invoked with `--worker`): one for an anchor, one per rank
for the import (gloo, `world = TP x PP` processes). Each prints one JSON line; the parent prints one table.

    time s    wall time of the step alone: load_file of every safetensors file (+ clone); from_pretrained (model
              construction included); load_hf_into into a model already built (building it is not timed;
              with perform_initialization=False its parameters are untouched pages until the import writes them)
    MB read   bytes of tensor data the step returned: the whole checkpoint for the anchors, the slices
              the rank needed for the import (SafetensorsReader.bytes_read); MB = 10^6 bytes
    MB/s      MB read / time s
    peak RSS  VmHWM of the process at the end (imports, model and the step included), MB
    step peak VmHWM reset (/proc/self/clear_refs) just before the step, minus VmRSS then: the memory the step
              itself added at its peak (file pages it mapped and touched count, as RSS counts them)

Ratios are against load_file's row of the same run. The page cache is warmed (the files read once) before
the first case, so every case reads from memory, not disk. Rows are the median time of `--repeats` fresh
runs; memory is the largest over them.

    python benchmarks/bench_convert.py                       # SmolLM2, TP=1, TP=3, PP=2, 3 repeats
    python benchmarks/bench_convert.py --layouts 1x1 --repeats 1 --hf-dir DIR   # another checkpoint
    python benchmarks/bench_convert.py --json results.json   # also the raw results
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

RESULT_PREFIX = "BENCH_RESULT "
ANCHOR = "load_file + copy"  # the ratios' anchor: every byte read into private memory
LAZY = "load_file (lazy mmap)"
HF = "transformers from_pretrained"
WORKER_TIMEOUT_S = 900


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _begin_step() -> int:
    """Trim the heap, reset VmHWM to VmRSS; the baseline VmRSS in kB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_kb("VmRSS")


def _files(hf_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))


def _measure(step) -> dict:
    baseline = _begin_step()
    start = time.perf_counter()
    nbytes = step()
    seconds = time.perf_counter() - start
    step_peak = _status_kb("VmHWM") - baseline
    return {"seconds": seconds, "bytes": nbytes, "step_peak_kb": step_peak}


def _worker_anchor(method: str, hf_dir: str) -> dict:
    import torch

    if method in (ANCHOR, LAZY):
        from safetensors.torch import load_file

        def step():  # load_file maps the file: its tensors are read when first touched (the copy here)
            shards = [load_file(path) for path in _files(hf_dir)]
            if method == ANCHOR:
                shards = [{k: t.clone() for k, t in shard.items()} for shard in shards]
            return sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
    else:
        import transformers

        def step():  # the checkpoint's bytes (a tied model's state dict would count the embedding twice)
            arch = json.load(open(os.path.join(hf_dir, "config.json")))["architectures"][0]
            getattr(transformers, arch).from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
            return sum(os.path.getsize(p) for p in _files(hf_dir))
    return _measure(step)


def _worker_import(hf_dir: str, tp: int, pp: int) -> dict:
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from nemo_mft.hf import describe, gpt_options, layer_spec, load_hf_into, read_config, transformer_config
    from nemo_mft.megatron import build_model, destroy_parallel, initialize_parallel, megatron_on_cpu

    with megatron_on_cpu():
        layout = initialize_parallel(tp, pp, seed=0)
        model = describe(read_config(hf_dir), seq_length=256)
        gpt = build_model(transformer_config(model, tp_size=tp, pp_size=pp), layer_spec(model),
                          gpt_options(model, tp_size=tp, seq_length=256), groups=layout.groups,
                          with_teacher=False)[0].student
        dist.barrier()  # every rank starts the import together, as in a real launch
        out = _measure(lambda: sum(load_hf_into(gpt, hf_dir, model, layout.groups).values()))
        destroy_parallel()
    dist.destroy_process_group()
    return out


def worker_main(spec: dict) -> None:
    if spec["method"] == "import":
        result = _worker_import(spec["hf_dir"], spec["tp"], spec["pp"])
    else:
        result = _worker_anchor(spec["method"], spec["hf_dir"])
    result["peak_rss_kb"] = _status_kb("VmHWM")  # the reset only lowers it to VmRSS: take the max below
    result["rank"] = int(os.environ.get("RANK", 0))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(spec: dict, world: int) -> list[dict]:
    """Run ``spec`` in ``world`` fresh processes; their JSON results, by rank."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, PYTHONWARNINGS="ignore", RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=WORKER_TIMEOUT_S)
        line = next((x for x in reversed(out.splitlines()) if x.startswith(RESULT_PREFIX)), None)
        if line is None:
            raise RuntimeError(f"{spec} rank {rank} exited {proc.returncode}: {err.strip()[-800:]}")
        results.append(json.loads(line[len(RESULT_PREFIX):]))
    return results


def measure(method: str, hf_dir: str, repeats: int, tp: int = 1, pp: int = 1) -> list[dict]:
    """One row per rank: median seconds over ``repeats`` runs, the largest memory."""
    spec = {"method": method, "hf_dir": hf_dir, "tp": tp, "pp": pp}
    runs = [_launch(spec, tp * pp) for _ in range(repeats)]
    rows = []
    for rank in range(tp * pp):
        mine = [run[rank] for run in runs]
        name = method if method != "import" else f"nemo-mft import TP={tp} PP={pp}"
        rows.append({
            "method": name, "procs": tp * pp, "rank": rank, "tp": tp, "pp": pp,
            "seconds": statistics.median(r["seconds"] for r in mine), "all_seconds": [r["seconds"] for r in mine],
            "mb": mine[0]["bytes"] / 1e6,
            "peak_rss_mb": max(r["peak_rss_kb"] for r in mine) / 1e3,
            "step_peak_mb": max(r["step_peak_kb"] for r in mine) / 1e3,
        })
    return rows


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


HEADERS = ["method", "procs", "rank", "MB read", "time s", "time vs load_file", "MB/s", "MB/s vs load_file",
           "peak RSS MB", "step peak MB", "step peak vs load_file"]


def table(rows: list[dict]) -> str:
    anchor = next(r for r in rows if r["method"] == ANCHOR)
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        mbps, anchor_mbps = r["mb"] / r["seconds"], anchor["mb"] / anchor["seconds"]
        cells = [r["method"], str(r["procs"]), str(r["rank"]), f"{r['mb']:.4g}", f"{r['seconds']:.4g}",
                 _fmt(_ratio(r["seconds"], anchor["seconds"]), ".2f", "x"), f"{mbps:.4g}",
                 _fmt(_ratio(mbps, anchor_mbps), ".2f", "x"), f"{r['peak_rss_mb']:.4g}", f"{r['step_peak_mb']:.4g}",
                 _fmt(_ratio(r["step_peak_mb"], anchor["step_peak_mb"]), ".2f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _default_dir() -> str:
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    from fixtures import smollm2

    return str(smollm2.fixture_dir())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", help="HF checkpoint directory (default: the SmolLM2 fixture)")
    parser.add_argument("--layouts", default="1x1,3x1,1x2", help="TPxPP of the imports (default 1x1,3x1,1x2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip the from_pretrained anchor")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    hf_dir = args.hf_dir or _default_dir()
    for path in _files(hf_dir):  # warm the page cache: every case reads from memory
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    rows = measure(ANCHOR, hf_dir, args.repeats) + measure(LAZY, hf_dir, args.repeats)
    if not args.no_hf:
        rows += measure(HF, hf_dir, args.repeats)
    for layout in args.layouts.split(","):
        tp, pp = (int(x) for x in layout.lower().split("x"))
        rows += measure("import", hf_dir, args.repeats, tp, pp)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, torch {__import__('torch').__version__}")
    print(f"checkpoint: {hf_dir} ({sum(os.path.getsize(p) for p in _files(hf_dir)) / 1e6:.1f} MB of safetensors)")
    print(f"{os.cpu_count()} CPUs; median of {args.repeats} fresh runs per row; imports use "
          f"cpu_count // procs torch threads per rank")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"hf_dir": hf_dir, "repeats": args.repeats, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
