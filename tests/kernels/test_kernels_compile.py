"""Compile the kernels for real GPU targets on a CPU machine (Triton ships ptxas; no GPU is needed).

The interpreter runs kernels as numpy code, so it misses what only the compiler checks: types of
loop-carried values, constexpr branches, lowering of every op. It also cannot show two properties that
the GPU relies on, checked here in the generated code: the row offset is computed in 64 bits (N * V_local
may exceed 2^31), and the gradient is rounded to bf16 to nearest (`cvt.rn`), once. ptxas (bundled with
Triton) then checks that the default launch configurations do not spill registers, and the PTX that the
logits move in 16-byte vectors when the launcher's alignment specialization applies.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
mft_kernels = pytest.importorskip("nemo_mft.kernels.mft_kernels")
triton_backend = pytest.importorskip("nemo_mft.kernels.triton_backend")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

pytestmark = pytest.mark.skipif(triton_backend.INTERPRETED, reason="kernels defined under TRITON_INTERPRET=1")

STATS_SIGNATURE = {
    "student_ptr": "*bf16", "teacher_ptr": "*bf16", "labels_ptr": "*i64", "stats_ptr": "*fp32",
    "argmax_ptr": "*i64", "stride_student": "i32", "stride_teacher": "i32", "real_width": "i32",
    "inv_temperature": "fp32", "SEPARATE_T1": "constexpr", "BLOCK": "constexpr",
}
STATS_ALIGNED = ("student_ptr", "teacher_ptr", "labels_ptr", "stats_ptr", "argmax_ptr", "stride_student",
                 "stride_teacher", "real_width")
GRAD_ALIGNED = ("student_ptr", "teacher_ptr", "grad_ptr", "labels_ptr", "norms_ptr", "mix_ptr", "coef_ptr",
                "stride_student", "stride_teacher", "stride_grad", "real_width", "width")
GRAD_SIGNATURE = {
    "student_ptr": "*bf16", "teacher_ptr": "*bf16", "grad_ptr": "*bf16", "labels_ptr": "*i64",
    "norms_ptr": "*fp32", "mix_ptr": "*fp32", "coef_ptr": "*fp32",
    "stride_student": "i32", "stride_teacher": "i32", "stride_grad": "i32", "real_width": "i32", "width": "i32",
    "inv_temperature": "fp32", "temperature": "fp32", "BLOCK": "constexpr",
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))


def _compile(kernel, signature, constexprs, arch, num_warps, aligned=()):
    """``aligned``: names of arguments compiled as multiples of 16 (pointers: 16-byte aligned), as Triton's
    launcher specializes them at run time when they are."""
    attrs = {(list(signature).index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    try:
        return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    except (RuntimeError, FileNotFoundError) as err:  # pragma: no cover - environment without ptxas
        if "ptxas" in str(err):
            pytest.skip(f"no usable ptxas: {err}")
        raise


def _compile_stats(separate_t1: bool, arch: int, aligned=()):
    return _compile(mft_kernels.mft_statistics_kernel, STATS_SIGNATURE,
                    {"SEPARATE_T1": separate_t1, "BLOCK": triton_backend.STATS_BLOCK}, arch,
                    triton_backend.STATS_NUM_WARPS, aligned)


def _compile_grad(arch: int, aligned=()):
    return _compile(mft_kernels.mft_gradient_kernel, GRAD_SIGNATURE, {"BLOCK": triton_backend.GRAD_BLOCK}, arch,
                    triton_backend.GRAD_NUM_WARPS, aligned)


def _has_64bit_row_offset(ttir: str) -> bool:
    """program_id is sign-extended to i64 and multiplied (by a row stride) in i64."""
    pid = re.search(r"(%\S+) = tt\.get_program_id x : i32", ttir)
    return bool(pid) and re.search(rf"= arith\.extsi {re.escape(pid.group(1))} : i32 to i64", ttir) is not None \
        and re.search(r"= arith\.muli \S+, \S+ : i64", ttir) is not None


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_ampere_and_hopper(arch):
    for separate in (False, True):
        stats = _compile_stats(separate, arch)
        assert _has_64bit_row_offset(stats.asm["ttir"])
    grad = _compile_grad(arch)
    assert _has_64bit_row_offset(grad.asm["ttir"])
    ptx = grad.asm["ptx"]
    to_bf16 = [line for line in ptx.splitlines() if re.search(r"cvt\S*\.bf16(x2)?\.f32", line)]
    assert to_bf16 and all(".rn" in line for line in to_bf16), to_bf16[:4]
    assert "cvt.f32.bf16" in ptx  # loads widened to fp32; no bf16 arithmetic in between


def _ptxas_report(ptx: str, arch: int, tmp_path) -> str:
    """ptxas -v of the PTX for sm_<arch> (Triton's bundled ptxas): registers, stack and spills."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():  # pragma: no cover - Triton without its bundled CUDA tools
        pytest.skip(f"no ptxas at {ptxas}")
    source = tmp_path / "kernel.ptx"
    source.write_text(ptx)
    target = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    proc = subprocess.run([str(ptxas), f"-arch={target}", "-v", str(source), "-o", os.devnull],
                          capture_output=True, text=True, check=True)
    return proc.stderr


@pytest.mark.parametrize("arch", [80, 90])
def test_default_launch_configs_do_not_spill_registers(arch, tmp_path):
    """Spills would turn the streaming loop's running sums into local-memory traffic on a bandwidth-bound
    kernel: the default configurations must fit in registers (and leave room for >= 2 programs per SM)."""
    kernels = [_compile_stats(False, arch), _compile_stats(True, arch), _compile_grad(arch)]
    for kernel, warps in zip(kernels, (triton_backend.STATS_NUM_WARPS,) * 2 + (triton_backend.GRAD_NUM_WARPS,)):
        report = _ptxas_report(kernel.asm["ptx"], arch, tmp_path)
        spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
        registers = [int(x) for x in re.findall(r"Used (\d+) registers", report)]
        assert spills and registers, report
        assert not any(spills), report
        assert 2 * registers[0] * 32 * warps <= 65536, f"fewer than 2 programs per SM fit: {report}"


def _global_memory_ops(ptx: str) -> Counter:
    """How many global loads/stores of each width (e.g. ``ld.global.v4.b32``) the PTX holds."""
    return Counter(re.findall(r"^\s+(?:@%p\d+\s+)?((?:ld|st)\.global\S*)\s", ptx, re.M))


def test_logits_move_in_16_byte_vectors_when_aligned():
    """Megatron pads V_local to a multiple of 128 and allocations are 256-byte aligned, so the launcher
    specializes pointers, row strides and widths as multiples of 16: every logit then moves in 16-byte
    vector loads/stores (8 bf16 per instruction), none one element at a time (the 2 scalar 16-bit loads
    left in pass 1 are the label logits)."""
    stats = _global_memory_ops(_compile_stats(False, 90, aligned=STATS_ALIGNED).asm["ptx"])
    grad = _global_memory_ops(_compile_grad(90, aligned=GRAD_ALIGNED).asm["ptx"])
    per_thread = triton_backend.STATS_BLOCK // (32 * triton_backend.STATS_NUM_WARPS)  # logits per array
    assert stats["ld.global.v4.b32"] == 2 * per_thread * 2 // 16, stats  # student and teacher
    assert stats["ld.global.b16"] == 2, stats
    per_thread = triton_backend.GRAD_BLOCK // (32 * triton_backend.GRAD_NUM_WARPS)
    assert grad["ld.global.v4.b32"] == 2 * per_thread * 2 // 16, grad
    assert grad["st.global.v4.b32"] == per_thread * 2 // 16 and "st.global.b16" not in grad, grad
