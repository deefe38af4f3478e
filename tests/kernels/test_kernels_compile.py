"""Compile the kernels for real GPU targets on a CPU machine (Triton ships ptxas; no GPU is needed).

The interpreter runs kernels as numpy code, so it misses what only the compiler checks: types of
loop-carried values, constexpr branches, lowering of every op. It also cannot show two properties that
the GPU relies on, checked here in the generated code: the row offset is computed in 64 bits (N * V_local
may exceed 2^31), and the gradient is rounded to bf16 to nearest (`cvt.rn`), once.
"""

from __future__ import annotations

import re

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
GRAD_SIGNATURE = {
    "student_ptr": "*bf16", "teacher_ptr": "*bf16", "grad_ptr": "*bf16", "labels_ptr": "*i64",
    "norms_ptr": "*fp32", "mix_ptr": "*fp32", "coef_ptr": "*fp32",
    "stride_student": "i32", "stride_teacher": "i32", "stride_grad": "i32", "real_width": "i32", "width": "i32",
    "inv_temperature": "fp32", "temperature": "fp32", "BLOCK": "constexpr",
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))


def _compile(kernel, signature, constexprs, arch):
    source = ASTSource(kernel, signature, constexprs=constexprs)
    try:
        return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": triton_backend.STATS_NUM_WARPS})
    except (RuntimeError, FileNotFoundError) as err:  # pragma: no cover - environment without ptxas
        if "ptxas" in str(err):
            pytest.skip(f"no usable ptxas: {err}")
        raise


def _has_64bit_row_offset(ttir: str) -> bool:
    """program_id is sign-extended to i64 and multiplied (by a row stride) in i64."""
    pid = re.search(r"(%\S+) = tt\.get_program_id x : i32", ttir)
    return bool(pid) and re.search(rf"= arith\.extsi {re.escape(pid.group(1))} : i32 to i64", ttir) is not None \
        and re.search(r"= arith\.muli \S+, \S+ : i64", ttir) is not None


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_ampere_and_hopper(arch):
    for separate in (False, True):
        stats = _compile(mft_kernels.mft_statistics_kernel, STATS_SIGNATURE,
                         {"SEPARATE_T1": separate, "BLOCK": triton_backend.STATS_BLOCK}, arch)
        assert _has_64bit_row_offset(stats.asm["ttir"])
    grad = _compile(mft_kernels.mft_gradient_kernel, GRAD_SIGNATURE, {"BLOCK": triton_backend.GRAD_BLOCK}, arch)
    assert _has_64bit_row_offset(grad.asm["ttir"])
    ptx = grad.asm["ptx"]
    to_bf16 = [line for line in ptx.splitlines() if re.search(r"cvt\S*\.bf16(x2)?\.f32", line)]
    assert to_bf16 and all(".rn" in line for line in to_bf16), to_bf16[:4]
    assert "cvt.f32.bf16" in ptx  # loads widened to fp32; no bf16 arithmetic in between
