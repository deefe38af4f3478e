"""Peak memory of MFT with LoRA (teacher = the base with adapters off) against plain LoRA finetuning and
against full-weight MFT with a frozen teacher copy, on a real model.

Each configuration is one `nemo-mft finetune --config-name mft_hf` run in its own process (a few
iterations, no evaluation sets beyond the recipe's validation file); the process reports its peak resident
set size (``ru_maxrss``) on a CPU, or ``torch.cuda.max_memory_allocated`` on a GPU. One table, ratios
against FT+LoRA measured in the same invocation.

    python benchmarks/bench_lora_memory.py --model ~/.cache/nemo-mft/smollm2-135m-instruct
    python benchmarks/bench_lora_memory.py --model DIR --seq-length 512 --iters 3   # other sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = (  # name, mft.method, peft overrides
    ("FT + LoRA", "ft", ("peft.method=lora",)),
    ("MFT + LoRA (teacher = adapters off)", "mft", ("peft.method=lora",)),
    ("FT full weights", "ft", ()),
    ("MFT full weights (frozen teacher copy)", "mft", ()),
)

# Runs the CLI in this process and prints the peak memory as the last line of stdout.
_MEASURE = """
import json, resource, runpy, sys
import torch
sys.argv = ["nemo_mft.finetune"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("nemo_mft.finetune", run_name="__main__")
except SystemExit as stop:
    code = stop.code or 0
gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print(json.dumps({"code": code, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "gpu_bytes": gpu}))
"""


def _data(root: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(16)]
    root.mkdir(parents=True, exist_ok=True)
    for name in ("training.jsonl", "validation.jsonl"):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def measure(model: str, data: Path, work: Path, name: str, method: str, peft: tuple, args) -> dict:
    slug = "".join(c if c.isalnum() else "_" for c in name)
    argv = ["--config-name", "mft_hf", f"checkpoint.pretrained_checkpoint={model}", f"dataset.dataset_root={data}",
            f"mft.method={method}", f"train.train_iters={args.iters}", "train.global_batch_size=1",
            "train.micro_batch_size=1", f"dataset.seq_length={args.seq_length}", "evaluation.max_eval_windows=1",
            "scheduler.lr_warmup_iters=0", "checkpoint.save=null", f"logger.log_dir={work / slug}",
            "logger.tensorboard=false", "logger.progress_bar=false", *peft]
    if not args.gpu:
        argv.append("model.params_dtype=fp32")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["code"]:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    peak = result["gpu_bytes"] if args.gpu else result["rss_kib"] * 1024
    return {"name": name, "peak_bytes": peak, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.path.expanduser("~/.cache/nemo-mft/smollm2-135m-instruct"))
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="measure CUDA memory (bf16) instead of host RSS")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = _data(Path(tmp) / "data")
        rows = [measure(args.model, data, Path(tmp), name, method, peft, args) for name, method, peft in CONFIGS]
    anchor = rows[0]["peak_bytes"]
    kind = "peak CUDA memory allocated" if args.gpu else "peak RSS"
    print(f"model {args.model}, seq_length {args.seq_length}, micro-batch 1, {args.iters} iterations; {kind}")
    print("| configuration | peak (MiB) | vs FT + LoRA | wall (s) |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['name']} | {row['peak_bytes'] / 2**20:.0f} | {row['peak_bytes'] / anchor:.3f}x | "
              f"{row['wall_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
