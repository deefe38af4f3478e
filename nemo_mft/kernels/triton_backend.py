"""`TritonBackend`: the two vocab-sized passes of the MFT loss as fused Triton kernels.

Implements the `nemo_mft.loss.backends.Backend` protocol (same statistics, same gradient as the loss's
`TorchBackend`, so both share the exchange, the combine and every error). `nemo_mft/__init__.py`
registers it as ``impl="triton"``; this module imports from `nemo_mft.loss` only its formulas. Bytes moved per logit
element with 16-bit logits: pass 1 reads student and teacher (4), pass 2 reads them again and writes
the gradient (6), 10 in all; extra memory is O(N) (statistics and per-token targets), plus the
[N, V_local] gradient unless it is written into the student buffer (``out=student``). When V_local and
the row strides are multiples of 16 (Megatron pads the vocabulary to a multiple of 128 per rank), Triton's
launcher specializes on that and the logits move in 16-byte vectors; other widths are correct but move
one element per instruction.

Runs on CUDA tensors, or on CPU tensors when the kernels were defined under Triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is first imported; tests only). fp64 inputs go through
the ``fallback`` backend given at construction, the PyTorch one (fp64 is a reference dtype, not a
training one).
"""

from __future__ import annotations

import contextlib

import torch
import triton

from nemo_mft.kernels import mft_kernels
from nemo_mft.loss import formulas

_COLUMNS = ("T_MAX", "T_SUMEXP", "T_DIFF", "S_MAX", "S_SUMEXP", "S1_MAX", "S1_SUMEXP", "T_LABEL", "S_LABEL",
            "NUM_STATS")
assert all(getattr(formulas, name) == getattr(mft_kernels, name).value for name in _COLUMNS), (
    "statistics columns differ between nemo_mft/loss/formulas.py and nemo_mft/kernels/mft_kernels.py"
)

# True when the kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors).
INTERPRETED = not isinstance(mft_kernels.mft_statistics_kernel, triton.runtime.JITFunction)

# Launch configuration (module-level so that benchmarks can sweep it and tests can force several
# blocks per row). Pass 1 loops over a row in blocks of up to STATS_BLOCK columns; pass 2 uses one
# program per GRAD_BLOCK columns of a row. Not autotuned: autotuning would re-run the in-place
# pass 2 on already-overwritten logits.
STATS_BLOCK = 4096
STATS_NUM_WARPS = 8
GRAD_BLOCK = 4096
GRAD_NUM_WARPS = 8


def _block(width: int, limit: int) -> int:
    return max(16, min(limit, triton.next_power_of_2(max(width, 1))))


def _rows_with_unit_column_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _on_device(x: torch.Tensor):
    """Launch on the logits' GPU, not on whichever is current."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"impl='triton' needs CUDA tensors, got logits on {x.device} (use impl='torch' or 'auto'; "
            "CPU tests run the kernels under TRITON_INTERPRET=1)"
        )


def _row_norms(targets: formulas.TokenTargets) -> torch.Tensor:
    """[N, 4] fp32: the per-row maxima and log-normalizers kernel 2 reads."""
    parts = (targets.teacher_max, targets.teacher_log_norm, targets.student_max, targets.student_log_norm)
    return torch.stack(parts, dim=1).float().contiguous()


class TritonBackend:
    """Fused two-pass backend (see the module docstring and `nemo_mft.kernels.mft_kernels`).

    ``fallback``: the backend that serves fp64 inputs (`nemo_mft.loss.backends.TorchBackend`).
    """

    def __init__(self, fallback) -> None:
        self.fallback = fallback

    def statistics(self, student, teacher, local_labels, layout, temperature, compute_dtype):
        _check_device(student)
        if compute_dtype == torch.float64:
            return self.fallback.statistics(student, teacher, local_labels, layout, temperature, compute_dtype)
        n = student.shape[0]
        stats = torch.empty(n, formulas.NUM_STATS, dtype=torch.float32, device=student.device)
        argmax = torch.empty(n, dtype=torch.int64, device=student.device)
        if n == 0:
            return stats, argmax
        student = _rows_with_unit_column_stride(student)
        teacher = _rows_with_unit_column_stride(teacher)
        with _on_device(student):
            mft_kernels.mft_statistics_kernel[(n,)](
                student, teacher, local_labels.contiguous(), stats, argmax,
                student.stride(0), teacher.stride(0), layout.real_width, 1.0 / temperature,
                SEPARATE_T1=temperature != 1.0,
                BLOCK=_block(layout.real_width, STATS_BLOCK),
                num_warps=STATS_NUM_WARPS,
            )
        return stats, argmax

    def gradient(self, student, teacher, local_labels, layout, targets, coef, temperature, grad_dtype, out=None):
        """Pass 2 into ``out`` (e.g. the student logits themselves: in place) or a new tensor."""
        _check_device(student)
        if targets.mix.dtype == torch.float64:
            return self.fallback.gradient(
                student, teacher, local_labels, layout, targets, coef, temperature, grad_dtype, out=out
            )
        n, width = student.shape
        grad = out if out is not None else torch.empty(n, width, dtype=grad_dtype, device=student.device)
        if n == 0:
            return grad
        # A column-strided `out` aliasing the student cannot be handled here (the autograd Function
        # only passes unit-column-stride buffers); a copy would lose the in-place write.
        assert grad.stride(-1) == 1 or width == 1, "gradient output must have column stride 1"
        student = _rows_with_unit_column_stride(student)
        teacher = _rows_with_unit_column_stride(teacher)
        block = _block(width, GRAD_BLOCK)
        with _on_device(student):
            mft_kernels.mft_gradient_kernel[(n, triton.cdiv(width, block))](
                student, teacher, grad, local_labels.contiguous(),
                _row_norms(targets),
                targets.mix.float().contiguous(), coef.float().contiguous(),
                student.stride(0), teacher.stride(0), grad.stride(0), layout.real_width, width,
                1.0 / temperature, float(temperature),
                BLOCK=block,
                num_warps=GRAD_NUM_WARPS,
            )
        return grad
