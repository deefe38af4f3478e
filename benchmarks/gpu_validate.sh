#!/usr/bin/env bash
# The Triton kernels' GPU checks, prepared to run in one or two calls of a GPU machine with PyTorch and
# Triton installed (the device tool's H200 image: Python 3.12, torch 2.11, triton 3.6):
#   tests   the kernel tests compiled for real: tests/kernels (test_kernels_gpu.py: the shared cases on
#           CUDA, bf16 rounded once, int64 offsets past 2^31, Llama-3 vocabulary; PTX compile tests)
#   tune    each pass on its own over launch configurations (benchmarks/tune_triton.py)
#   bench   the loss benchmark: bf16, N=16384, V in {32000, 128256, 256000} (benchmarks/bench_loss.py)
# Usage: bash benchmarks/gpu_validate.sh [tests] [tune] [bench]     (no argument: all three, in this order)
# Logs and JSON go to $OUT (the device tool's result folder) or ./gpu_validate_out. Packages the image lacks
# (ModelOpt and its dependencies) are installed from .whl/, which benchmarks/device_wheels.sh fills.
# Every step has its own time limit (seconds: TESTS_S, TUNE_S, BENCH_S), so that a hang in one keeps the
# results of the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_validate_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nemo_mft_site \
    .whl/*.whl || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/nemo_mft_site"
fi
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests tune bench)

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import modelopt; print('modelopt', modelopt.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$out/env.txt"

status=0
for step in "${steps[@]}"; do
  echo "== $step ($(date -u +%T))"
  case $step in
    tests) timeout "${TESTS_S:-240}" python3 -m pytest -q -rfEs -p no:cacheprovider tests/kernels \
             2>&1 | tee "$out/tests.log" ;;
    tune)  timeout "${TUNE_S:-150}" python3 benchmarks/tune_triton.py --json "$out/tune.json" \
             2>&1 | tee "$out/tune.md" ;;
    bench) timeout "${BENCH_S:-330}" python3 benchmarks/bench_loss.py --device cuda --markdown \
             --worker-timeout 150 --json "$out/bench.json" 2>&1 | tee "$out/bench.md" ;;
    *) echo "unknown step '$step' (tests, tune, bench)" >&2; exit 2 ;;
  esac
  rc=$?
  echo "== $step: exit $rc ($(date -u +%T))"
  [ $rc -ne 0 ] && status=$rc
done
exit $status
