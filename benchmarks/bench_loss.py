#!/usr/bin/env python
"""Speed and memory of the MFT loss (forward + backward) against ModelOpt's `MFTLoss` and eager PyTorch.

CPU mode (default): fp32, V=32000, N in {1024, 4096}; nemo-mft `impl="torch"`, ModelOpt `MFTLoss`
and an eager fp32 reference written with plain torch ops. Wall time (median of repeats after a warm-up)
and extra peak memory in bytes per logit element.

CUDA mode (`--device cuda`): bf16, N=16384, V in {32000, 128256, 256000}, TP=1; nemo-mft
`impl="triton"` (gradient written in place into the student logits, `inplace_grad=True`) and
`impl="torch"`, `torch.compile` of the eager reference, ModelOpt `MFTLoss` (or 'OOM').
Time from CUDA events, effective bandwidth counting 10 bytes per logit element (read s and t twice,
write the gradient once) against the device-to-device copy bandwidth measured in the same run, and
extra peak memory from `torch.cuda.max_memory_allocated`.

Every (method, N, V) runs in a fresh subprocess (this script re-invoked with `--worker`), which
prints one JSON line; the parent prints one table and whether the targets are met.

    python benchmarks/bench_loss.py                      # CPU, the sizes above
    python benchmarks/bench_loss.py --device cuda        # GPU
    python benchmarks/bench_loss.py --quick --markdown   # small smoke run, markdown table
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

# Run from a checkout without installing the package.
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from nemo_mft import mft_loss  # noqa: E402

TAU = 0.25
TEMPERATURE = 1.0
RESULT_PREFIX = "BENCH_RESULT "
COPY_METHOD = "copy"  # worker pseudo-method: device-to-device copy bandwidth
WORKER_TIMEOUT_S = 1800

# Display names, in table order. Keys are what --methods takes.
METHOD_NAMES = {
    "triton": "nemo-mft triton",
    "torch": "nemo-mft torch",
    "compile": "torch.compile(eager)",
    "eager": "eager torch (fp32)",
    "modelopt": "ModelOpt MFTLoss",
}

# Default sizes per device: (tokens, vocab sizes, dtype, methods, warm-up, repeats); quick = smoke run.
DEFAULTS = {
    "cpu": dict(tokens=[1024, 4096], vocab=[32000], dtype="float32", methods=["torch", "modelopt", "eager"],
                warmup=1, repeats=5),
    "cuda": dict(tokens=[16384], vocab=[32000, 128256, 256000], dtype="bfloat16",
                 methods=["triton", "torch", "compile", "modelopt"], warmup=3, repeats=10),
}
QUICK = {"cpu": dict(tokens=[256], vocab=[4096], warmup=1, repeats=3),
         "cuda": dict(tokens=[2048], vocab=[32000], warmup=2, repeats=5)}

# Targets (docs/method.md, section 3).
CPU_MAX_BYTES_PER_ELEMENT = 5.0
CPU_MAX_TIME_RATIO = 0.5
CUDA_MIN_ROOFLINE_FRACTION = 0.85
CUDA_MAX_EXTRA_FRACTION_OF_LOGITS = 0.01
CUDA_MIN_SPEEDUP = 10.0


@dataclass(frozen=True)
class Case:
    """One measurement, run in its own subprocess."""

    method: str
    device: str
    n: int
    v: int
    dtype: str
    warmup: int
    repeats: int
    seed: int = 0


@dataclass
class Result:
    """What a worker reports (one JSON line)."""

    case: Case
    status: str = "ok"  # "ok", "OOM" or "error"
    time_ms: float | None = None
    times_ms: list[float] = field(default_factory=list)
    extra_bytes: int | None = None
    loss: float | None = None
    memory_probe: str = ""  # how extra_bytes was measured
    note: str = ""
    error: str = ""

    @property
    def elements(self) -> int:
        return self.case.n * self.case.v

    @property
    def bytes_per_element(self) -> float | None:
        return None if self.extra_bytes is None else self.extra_bytes / self.elements


# ----------------------------------------------------------------------------------------------------
# The compared losses
# ----------------------------------------------------------------------------------------------------


def eager_mft(student, teacher, labels, tau: float = TAU, temperature: float = TEMPERATURE):
    """Eager fp32 MFT written with plain torch ops and autograd (the 'eager torch' anchor).

    q = (1 - m) softmax(t/T) + m onehot(y) with the correction on all tokens; the loss is
    T^2 KL(q || softmax(s/T)) averaged over rows (ModelOpt's "batchmean").
    """
    log_probs = F.log_softmax(student.float() / temperature, dim=-1)
    with torch.no_grad():
        p = F.softmax(teacher.float() / temperature, dim=-1)
        argmax = p.argmax(dim=-1, keepdim=True)
        y = labels.unsqueeze(-1)
        p_a = p.gather(-1, argmax).squeeze(-1)
        p_y = p.gather(-1, y).squeeze(-1)
        m_wrong = (p_a - p_y + tau) / (1 + p_a - p_y)
        capped = torch.where(p_y > 1 - tau, 1.0, p_y + tau)
        m_right = torch.where(p_y < 1, (capped - p_y) / (1 - p_y), 1.0)
        m = torch.where(argmax.squeeze(-1) != labels, m_wrong, m_right).unsqueeze(-1)
        q = ((1 - m) * p).scatter_add(-1, y, m)
    return F.kl_div(log_probs, q, reduction="batchmean") * temperature**2


def build_loss(method: str):
    """(loss_fn(student, teacher, labels) -> scalar, note, writes_student_in_place) for a method key."""
    if method in ("torch", "triton"):
        # Triton: the gradient goes into the student logits' buffer (the deployment setting; O(N) extra memory).
        inplace = method == "triton"
        kwargs = {"inplace_grad": True} if inplace else {}
        note = "in-place gradient" if inplace else ""

        def nemo(s, t, y):
            return mft_loss(s, t, y, tau=TAU, temperature=TEMPERATURE, impl=method, **kwargs)

        return nemo, note, inplace
    if method == "eager":
        return eager_mft, "", False
    if method == "compile":
        return torch.compile(eager_mft, dynamic=False), "", False
    if method == "modelopt":
        from modelopt.torch.distill import MFTLoss

        return MFTLoss(temperature=TEMPERATURE, threshold=TAU), "", False
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHOD_NAMES)}")


def make_inputs(case: Case):
    """Seeded student logits (requiring grad), teacher logits and labels; the same for every method.

    The student is the teacher plus noise (MFT starts from the teacher's weights); half of the labels
    are the teacher's argmax so both branches of the correction run.
    """
    dtype, device = getattr(torch, case.dtype), torch.device(case.device)
    gen = torch.Generator(device=device).manual_seed(case.seed)
    teacher = torch.randn(case.n, case.v, generator=gen, device=device, dtype=dtype).mul_(2.0)
    student = torch.randn(case.n, case.v, generator=gen, device=device, dtype=dtype).mul_(0.5).add_(teacher)
    labels = torch.randint(0, case.v, (case.n,), generator=gen, device=device)
    labels[::2] = teacher[::2].argmax(dim=-1)
    return student.requires_grad_(), teacher, labels


# ----------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------
#
# CPU: ru_maxrss is a high-water mark over the whole process life (imports, input creation, warm-up),
# so it cannot isolate one call. Linux lets a process reset its own high-water mark: writing "5" to
# /proc/self/clear_refs sets VmHWM back to the current VmRSS (kernel >= 4.0; verified to work on the
# machine of RESULTS.md). We record VmRSS after the inputs exist, reset VmHWM, run forward+backward once
# and read VmHWM: an exact page-level peak, with no sampling gaps. Before the baseline, glibc's
# malloc_trim returns freed heap memory to the OS, so the call cannot reuse pages that are resident but
# free (which would hide part of its peak). Where clear_refs is unavailable we fall back to a thread
# sampling VmRSS every millisecond, which is a lower bound.
#
# CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, relative to memory_allocated
# with the inputs in place; the caching allocator's reserve does not count.


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _sampled_peak_kb(run) -> int:
    """Peak VmRSS while run() executes, sampled every millisecond (lower bound)."""
    peak, done = [_proc_status_kb("VmRSS")], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _proc_status_kb("VmRSS"))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _proc_status_kb("VmRSS"))


def cpu_extra_peak_bytes(run) -> tuple[int, str]:
    """Peak RSS during run() minus RSS before it, in bytes, and how it was measured."""
    gc.collect()
    _malloc_trim()
    baseline = _proc_status_kb("VmRSS")
    if _reset_high_water_mark():
        run()
        return (_proc_status_kb("VmHWM") - baseline) * 1024, "VmHWM"
    return (_sampled_peak_kb(run) - baseline) * 1024, "sampled VmRSS"


def cuda_extra_peak_bytes(run) -> tuple[int, str]:
    """torch.cuda.max_memory_allocated during run() minus the memory allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline, "max_memory_allocated"


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------


def time_ms(run, prepare, device: str, repeats: int) -> list[float]:
    """Milliseconds of run() per repeat; prepare() runs before each, untimed. CUDA events on GPU."""
    times = []
    for _ in range(repeats):
        prepare()
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


# ----------------------------------------------------------------------------------------------------
# Worker (one case per process)
# ----------------------------------------------------------------------------------------------------


def measure_loss(case: Case) -> Result:
    """Warm-up, then extra peak memory of one forward+backward, then the timed repeats."""
    loss_fn, note, inplace = build_loss(case.method)
    student, teacher, labels = make_inputs(case)
    # An in-place gradient overwrites the student logits: restore them (untimed) before each call.
    pristine = student.detach().clone() if inplace else None
    last_loss = [None]  # the latest call's loss, for the cross-method agreement check

    def prepare():
        student.grad = None
        if pristine is not None:
            with torch.no_grad():
                student.copy_(pristine)

    def run():
        loss = loss_fn(student, teacher, labels)
        loss.backward()
        last_loss[0] = loss.detach()

    for _ in range(case.warmup):
        prepare()
        run()
    prepare()
    probe = cuda_extra_peak_bytes if case.device == "cuda" else cpu_extra_peak_bytes
    extra, how = probe(run)
    loss_value = float(last_loss[0])
    times = time_ms(run, prepare, case.device, case.repeats)
    return Result(case, time_ms=statistics.median(times), times_ms=times, extra_bytes=extra,
                  loss=loss_value, memory_probe=how, note=note)


def measure_copy_bandwidth(case: Case) -> Result:
    """Device-to-device copy of an N x V buffer; time_ms is the median copy, GB/s = 2 * bytes / time.

    The note carries the device's name, so the parent never initializes CUDA (a context in the parent
    would take memory from the workers).
    """
    src = torch.ones(case.n, case.v, dtype=getattr(torch, case.dtype), device=case.device)
    dst = torch.empty_like(src)
    for _ in range(case.warmup):
        dst.copy_(src)
    times = time_ms(lambda: dst.copy_(src), lambda: None, case.device, case.repeats)
    name = torch.cuda.get_device_name() if case.device == "cuda" else platform.processor()
    return Result(case, time_ms=statistics.median(times), times_ms=times, note=name)


def copy_gbps(copy: Result) -> float | None:
    """GB/s of a `measure_copy_bandwidth` result, counting the bytes read and written; None if it failed."""
    if copy.status != "ok":
        return None
    return 2 * copy.elements * _itemsize(copy.case.dtype) / (copy.time_ms * 1e6)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def worker_main(case_json: str) -> None:
    """Run one case and print its Result as one JSON line."""
    case = Case(**json.loads(case_json))
    try:
        result = measure_copy_bandwidth(case) if case.method == COPY_METHOD else measure_loss(case)
    except Exception as err:  # reported in the table, not raised: one failing row must not stop the run
        status = "OOM" if is_oom(err) else "error"
        result = Result(case, status=status, error=f"{type(err).__name__}: {str(err)[:300]}")
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)


# ----------------------------------------------------------------------------------------------------
# Parent: spawn workers, tabulate, check targets
# ----------------------------------------------------------------------------------------------------


def run_case(case: Case, timeout_s: float = WORKER_TIMEOUT_S) -> Result:
    """Run a case in a fresh interpreter and parse its JSON line."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(asdict(case))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Result(case, status="error", error=f"timed out after {timeout_s:g} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX):])
            data["case"] = Case(**data["case"])
            return Result(**data)
    killed = " (killed: out of host memory?)" if proc.returncode in (-9, 137) else ""
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return Result(case, status="error", error=f"exit {proc.returncode}{killed}: {' | '.join(tail)}")


def fmt(value, spec: str, suffix: str = "") -> str:
    """Format a number, or "n/a" for a missing one."""
    return "n/a" if value is None else format(value, spec) + suffix


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing (or b is 0)."""
    return None if a is None or not b else a / b


class Report:
    """Results of one run, keyed by (method, N, V), with the derived columns and the target checks."""

    def __init__(self, results: list[Result], device: str, copy: Result | None):
        self.results, self.device, self.copy = results, device, copy
        self.by_key = {(r.case.method, r.case.n, r.case.v): r for r in results}

    @property
    def copy_gbps(self) -> float | None:
        """Measured device-to-device copy bandwidth (read + write), GB/s."""
        return None if self.copy is None else copy_gbps(self.copy)

    def ok(self, method: str, n: int, v: int) -> Result | None:
        r = self.by_key.get((method, n, v))
        return r if r is not None and r.status == "ok" else None

    def reference(self, r: Result) -> Result | None:
        """ModelOpt's result at the same size, if it ran."""
        return self.ok("modelopt", r.case.n, r.case.v)

    def time_ratio(self, r: Result) -> float | None:
        ref = self.reference(r)
        return ratio(r.time_ms, ref and ref.time_ms)

    def memory_ratio(self, r: Result) -> float | None:
        ref = self.reference(r)
        return ratio(r.extra_bytes, ref and ref.extra_bytes)

    @staticmethod
    def effective_gbps(r: Result) -> float | None:
        """Bandwidth counting the 2-pass roofline's 5 logit reads/writes: 10 bytes/element in bf16."""
        return None if r.time_ms is None else 5 * _itemsize(r.case.dtype) * r.elements / (r.time_ms * 1e6)

    def roofline_fraction(self, r: Result) -> float | None:
        return ratio(self.effective_gbps(r), self.copy_gbps)

    def headers(self) -> list[str]:
        cols = ["method", "N", "V", "dtype", "time ms", "time vs ModelOpt", "extra B/elem*", "mem vs ModelOpt"]
        return cols + (["GB/s (10 B/elem)", "% of copy BW"] if self.device == "cuda" else [])

    def row(self, r: Result) -> list[str]:
        c = r.case
        cells = [METHOD_NAMES[c.method], str(c.n), str(c.v), c.dtype]
        if r.status != "ok":
            return cells + [r.status] + ["-"] * (len(self.headers()) - len(cells) - 1)
        cells += [fmt(r.time_ms, ".1f" if r.time_ms >= 10 else ".2f"), fmt(self.time_ratio(r), ".2f", suffix="x"),
                  fmt(r.bytes_per_element, ".2f"), fmt(self.memory_ratio(r), ".2f", suffix="x")]
        if self.device == "cuda":
            cells += [fmt(self.effective_gbps(r), ".0f"), fmt(self.roofline_fraction(r), ".0%")]
        return cells

    def table(self, markdown: bool) -> str:
        return render_table(self.headers(), [self.row(r) for r in self.results], markdown)

    def notes(self) -> list[str]:
        """Footnotes: what the memory column includes, the copy bandwidth, per-row notes and errors."""
        grad = "4 B/elem in fp32" if self.device == "cpu" else "2 B/elem in bf16 unless written in place"
        probes = ", ".join(sorted({r.memory_probe for r in self.results if r.memory_probe})) or "n/a"
        lines = [f"* extra peak memory per logit element over the inputs, measured by {probes}; "
                 f"includes the gradient ({grad})."]
        if self.copy is not None:
            lines.append(f"device-to-device copy bandwidth ({self.copy.note or self.copy.error}): "
                         f"{fmt(self.copy_gbps, '.0f')} GB/s")
        for r in self.results:
            if r.error or r.note:
                lines.append(f"{METHOD_NAMES[r.case.method]} N={r.case.n} V={r.case.v}: {r.error or r.note}")
        return lines + self.loss_agreement()

    def loss_agreement(self) -> list[str]:
        """Largest relative difference of any method's loss from ModelOpt's at the same size."""
        diffs = [abs(r.loss - ref.loss) / max(abs(ref.loss), 1e-12)
                 for r in self.results
                 if r.loss is not None and (ref := self.reference(r)) is not None and ref is not r]
        return [f"loss agreement with ModelOpt: max relative difference {max(diffs):.1e}"] if diffs else []

    def targets(self) -> list[str]:
        return self._cpu_targets() if self.device == "cpu" else self._cuda_targets()

    def _rows(self, method: str) -> list[Result]:
        return [r for r in self.results if r.case.method == method]

    def _cpu_targets(self) -> list[str]:
        lines = []
        for r in self._rows("torch"):
            size = f"N={r.case.n} V={r.case.v}"
            lines += [
                _check(f"nemo-mft torch {size}: extra memory <= {CPU_MAX_BYTES_PER_ELEMENT:g} B/elem",
                       r.bytes_per_element, lambda x: x <= CPU_MAX_BYTES_PER_ELEMENT, ".2f"),
                _check(f"nemo-mft torch {size}: time <= {CPU_MAX_TIME_RATIO:g}x ModelOpt",
                       self.time_ratio(r), lambda x: x <= CPU_MAX_TIME_RATIO, ".2f"),
            ]
        return lines

    def _cuda_targets(self) -> list[str]:
        lines = []
        for r in self._rows("triton"):
            size = f"N={r.case.n} V={r.case.v}"
            logits_bytes = r.elements * _itemsize(r.case.dtype)
            lines += [
                _check(f"triton {size}: >= {CUDA_MIN_ROOFLINE_FRACTION:.0%} of the 10 B/elem roofline",
                       self.roofline_fraction(r), lambda x: x >= CUDA_MIN_ROOFLINE_FRACTION, ".0%"),
                _check(f"triton {size}: extra memory <= {CUDA_MAX_EXTRA_FRACTION_OF_LOGITS:.0%} of the logits",
                       ratio(r.extra_bytes, logits_bytes), lambda x: x <= CUDA_MAX_EXTRA_FRACTION_OF_LOGITS, ".2%"),
            ]
        fitted = [r for r in self._rows("modelopt") if r.status == "ok"]
        if fitted:
            largest = max(fitted, key=lambda r: r.elements)
            triton = self.ok("triton", largest.case.n, largest.case.v)
            lines.append(_check(
                f"triton >= {CUDA_MIN_SPEEDUP:g}x faster than ModelOpt at the largest size ModelOpt fits "
                f"(N={largest.case.n} V={largest.case.v})",
                ratio(largest.time_ms, triton and triton.time_ms), lambda x: x >= CUDA_MIN_SPEEDUP, ".1f"))
        return lines


def _itemsize(dtype: str) -> int:
    return getattr(torch, dtype).itemsize


def _check(label: str, value, ok, spec: str) -> str:
    if value is None:
        return f"[n/a ] {label}: not measured"
    return f"[{'met ' if ok(value) else 'MISS'}] {label}: {format(value, spec)}"


def render_table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Plain aligned text, or a markdown table."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--repeats", type=int, help="timed repeats per case (the median is reported)")
    parser.add_argument("--warmup", type=int, help="untimed calls per case before measuring")
    parser.add_argument("--tokens", type=_int_list, help="comma-separated N values (overrides the defaults)")
    parser.add_argument("--vocab", type=_int_list, help="comma-separated V values (overrides the defaults)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--methods", type=lambda s: s.split(","), help=f"comma-separated from {list(METHOD_NAMES)}")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--json", type=Path, help="write the raw results here, rewritten after every case")
    parser.add_argument("--worker-timeout", type=float, default=WORKER_TIMEOUT_S,
                        help=f"seconds one case may take before it is reported as an error (default {WORKER_TIMEOUT_S})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = dict(DEFAULTS[args.device], **(QUICK[args.device] if args.quick else {}))
    for key, value in settings.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.methods) - set(METHOD_NAMES)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHOD_NAMES)}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def copy_case(dtype: str) -> Case:
    """Device-to-device copy of 2 GiB per buffer: bandwidth-bound on any current GPU."""
    width = 16384
    return Case(COPY_METHOD, "cuda", (2 << 30) // (_itemsize(dtype) * width), width, dtype, warmup=3, repeats=20)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    load_before = load_average()
    copy = run_case(copy_case(args.dtype), args.worker_timeout) if args.device == "cuda" else None
    methods = [m for m in METHOD_NAMES if m in args.methods]
    results = []
    for case in (Case(m, args.device, n, v, args.dtype, args.warmup, args.repeats)
                 for n in args.tokens for v in args.vocab for m in methods):
        results.append(run_case(case, args.worker_timeout))
        r = results[-1]
        print(f"[{len(results)}] {METHOD_NAMES[case.method]} N={case.n} V={case.v}: {r.status} "
              f"{fmt(r.time_ms, '.2f', ' ms')} {r.error}", file=sys.stderr, flush=True)
        if args.json:  # after every case: a run cut short keeps what it measured
            args.json.write_text(json.dumps({"copy": copy and asdict(copy), "results": [asdict(x) for x in results]},
                                            indent=1))
    report = Report(results, args.device, copy)
    print(f"MFT loss forward+backward (tau={TAU}, T={TEMPERATURE}, TP=1) on {args.device}: median of "
          f"{args.repeats} after {args.warmup} warm-up, each case in a fresh process. torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; load average before {load_before}, after {load_average()}.")
    print()
    print(report.table(args.markdown))
    print()
    print("\n".join(report.notes() + [""] + report.targets()))


if __name__ == "__main__":
    main()
