"""Where the two vocab-sized passes run: chunked PyTorch here, fused Triton in `nemo_mft.kernels`.

A backend reduces this rank's shard to per-token statistics (pass 1) and writes the student gradient
(pass 2). Everything between the passes (the exchange over the TP group and the per-token combine) is
shared, so both backends have the same semantics and the same errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from nemo_mft.loss import formulas

# Elements of one row block of the PyTorch path. Its temporaries are a few reused blocks
# (`formulas.Scratch`), so the extra memory is bounded by the block, not by the number of tokens:
# 1 MiB per fp32 temporary on CPU (2^18 to 2^20 measured equally fast at V=32000, 2^16 1.7x slower
# from per-op overhead), larger on GPUs where kernel-launch overhead dominates small blocks.
_BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 25}


@dataclass(frozen=True)
class ShardLayout:
    """Where this rank's logits sit in the global vocabulary.

    offset: global index of the shard's first column (rank * V_local).
    real_width: number of the shard's columns below the true vocabulary size (the rest is padding).
    """

    offset: int
    real_width: int


class Backend(Protocol):
    def statistics(
        self, student: torch.Tensor, teacher: torch.Tensor, local_labels: torch.Tensor, layout: ShardLayout,
        temperature: float, compute_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass 1 over [N, V_local] logits -> ([N, NUM_STATS] stats, [N] int64 LOCAL teacher argmax)."""

    def gradient(
        self, student: torch.Tensor, teacher: torch.Tensor, local_labels: torch.Tensor, layout: ShardLayout,
        targets: formulas.TokenTargets, coef: torch.Tensor, temperature: float, grad_dtype: torch.dtype,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pass 2 -> [N, V_local] gradient in grad_dtype, zero on padding columns and on rows with coef 0.

        ``out``: [N, V_local] buffer of grad_dtype with column stride 1 to write into and return (may be
        ``student`` itself: the gradient then overwrites the logits in place); None = a new tensor.
        """


def row_blocks(num_rows: int, width: int, device: torch.device):
    """Slices of rows whose [rows, width] blocks hold about the device's block size of elements."""
    rows = max(1, _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS["cuda"]) // max(width, 1))
    for start in range(0, num_rows, rows):
        yield slice(start, min(start + rows, num_rows))


class TorchBackend:
    """Readable reference implementation: the formulas applied block by block of rows."""

    def statistics(self, student, teacher, local_labels, layout, temperature, compute_dtype):
        n = student.shape[0]
        stats = torch.empty(n, formulas.NUM_STATS, dtype=compute_dtype, device=student.device)
        argmax = torch.empty(n, dtype=torch.int64, device=student.device)
        cols = slice(0, layout.real_width)
        scratch = formulas.Scratch()
        for rows in row_blocks(n, layout.real_width, student.device):
            stats[rows], argmax[rows] = formulas.shard_statistics(
                student[rows, cols], teacher[rows, cols], local_labels[rows], temperature, compute_dtype, scratch
            )
        return stats, argmax

    def gradient(self, student, teacher, local_labels, layout, targets, coef, temperature, grad_dtype, out=None):
        n, width = student.shape
        # In place (out is student) is safe: each row block is read completely before it is written,
        # and padding columns are never read.
        grad = out if out is not None else torch.empty(n, width, dtype=grad_dtype, device=student.device)
        grad[:, layout.real_width:] = 0
        cols = slice(0, layout.real_width)
        scratch = formulas.Scratch()
        for rows in row_blocks(n, layout.real_width, student.device):
            formulas.student_gradient(
                student[rows, cols], teacher[rows, cols], local_labels[rows], targets.rows(rows), coef[rows],
                temperature, grad[rows, cols], scratch,
            )
        return grad


# Backends other than the PyTorch one, by ``impl`` name: zero-argument factories, registered by the
# package that implements them (`nemo_mft/__init__.py` wires the Triton kernels in), so that this layer
# never imports a layer above it. A factory raises ImportError when its backend cannot be loaded.
_FACTORIES: dict[str, Callable[[], Backend]] = {}


def register_backend(impl: str, factory: Callable[[], Backend]) -> None:
    """Make ``mft_loss(..., impl=impl)`` use ``factory()`` (a backend for CUDA tensors)."""
    if impl in ("auto", "torch"):
        raise ValueError(f"impl {impl!r} is reserved")
    _FACTORIES[impl] = factory


def select_backend(impl: str, device: torch.device) -> Backend:
    """The backend for ``impl`` ("auto" = the registered Triton backend for CUDA tensors when it loads)."""
    if impl == "torch" or (impl == "auto" and device.type != "cuda"):
        return TorchBackend()
    name = "triton" if impl == "auto" else impl
    factory = _FACTORIES.get(name)
    try:
        if factory is None:
            raise ImportError(f"no backend is registered for impl={name!r}")
        return factory()
    except ImportError as err:
        if impl == "auto":
            return TorchBackend()
        raise ValueError(f"impl={impl!r} needs the Triton kernels, which could not be imported: {err}") from err
