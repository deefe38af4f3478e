"""Shared helpers for the MFT loss tests: input generators, the float64 reference and per-dtype tolerances.

``reference.py`` is loaded by file path under the unique module name ``mft_loss_reference`` so that a
``reference.py`` elsewhere under ``tests/`` can never shadow it (test directories have no __init__.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_REF_NAME = "mft_loss_reference"
if _REF_NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_REF_NAME, Path(__file__).with_name("reference.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_REF_NAME] = _mod
    _spec.loader.exec_module(_mod)
ref = sys.modules[_REF_NAME]
reference_mft = ref.reference_mft
reference_autograd = ref.reference_autograd
corrected_target_rows = ref.corrected_target_rows

F64 = torch.float64
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TAUS = [0.0, 0.05, 0.25, 0.6, 1.0]
TEMPS = [1.0, 2.0]

# Per-dtype tolerances against the float64 reference. For 16-bit inputs the reference runs on the SAME
# (already rounded) 16-bit values upcast to float64, so the only differences are the implementation's fp32
# arithmetic and the single rounding of the gradient to the student dtype.
#   float64: the implementation stays in float64 -> loss rtol 1e-10, gradient rtol 1e-10 (+1e-12 * max|g|).
#   float32: fp32 math -> loss rtol 1e-5, gradient rtol 1e-5 (+1e-6 * max|g| for cancellation in p - q).
#   bfloat16: fp32 math, gradient rounded once to bf16 (8-bit significand: relative step 2^-8, rounding
#             error <= 2^-9) -> loss rtol 1e-5, gradient rtol 2^-8 (+2^-12 * max|g|).
#   float16: as bf16 with an 11-bit significand -> gradient rtol 2^-10 (+2^-14 * max|g|), plus 2^-24
#             absolute: gradients below 6.1e-5 are fp16 subnormals whose spacing is 2^-24.
TOL = {
    torch.float64: dict(loss_rtol=1e-10, loss_atol=1e-12, grad_rtol=1e-10, grad_atol_rel=1e-12, grad_atol_abs=0.0),
    torch.float32: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=1e-5, grad_atol_rel=1e-6, grad_atol_abs=0.0),
    torch.bfloat16: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=2**-8, grad_atol_rel=2**-12, grad_atol_abs=0.0),
    torch.float16: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=2**-10, grad_atol_rel=2**-14,
                        grad_atol_abs=2**-24),
}


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def assert_loss_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, msg: str = "") -> None:
    tol = TOL[dtype]
    assert torch.isfinite(actual).all(), f"non-finite loss {actual} {msg}"
    torch.testing.assert_close(actual.detach().to(F64), expected.to(F64), rtol=tol["loss_rtol"],
                               atol=tol["loss_atol"], msg=lambda m: f"loss mismatch {msg}\n{m}")


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, msg: str = "",
                      roundings: int = 1) -> None:
    """``roundings``: 2 when the gradient was rounded to ``dtype`` and then scaled by an incoming gradient."""
    tol = {key: value * roundings for key, value in TOL[dtype].items()}
    assert actual is not None, f"no gradient {msg}"
    assert actual.dtype == dtype, f"gradient dtype {actual.dtype}, expected {dtype} {msg}"
    assert torch.isfinite(actual).all(), f"non-finite gradient {msg}"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    atol = tol["grad_atol_rel"] * scale + tol["grad_atol_abs"]
    torch.testing.assert_close(actual.detach().to(F64), expected.to(F64), rtol=tol["grad_rtol"], atol=atol,
                               msg=lambda m: f"gradient mismatch {msg}\n{m}")


# Row kinds. Exact ties are built in float64 with identical values, which stay identical after any cast.
ROW_KINDS = ("right", "wrong", "confident_right", "tie_label_first", "tie_label_second", "tie_others", "wrong_close")


def make_inputs(lead: tuple, width: int, dtype: torch.dtype, *, seed: int, vocab_size: int | None = None,
                kinds=ROW_KINDS, teacher_scale: float = 2.0, pad_fill: str = "large", scale: float = 1.0,
                bump: float = 7.0):
    """Student/teacher logits ``[*lead, width]`` in ``dtype`` and int64 labels ``lead``.

    Rows cycle through ``kinds`` so every batch mixes teacher-right, teacher-wrong and exact-tie rows.
    Columns >= vocab_size are padding, filled with large finite values ("large") or -inf ("-inf") so that
    any leak into the math changes the result.
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = width if vocab_size is None else vocab_size
    n = 1
    for d in lead:
        n *= d
    t = (torch.randn(n, vocab, generator=gen, dtype=F64) * teacher_scale).clamp(-3 * teacher_scale, 3 * teacher_scale)
    labels = torch.empty(n, dtype=torch.long)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        perm = torch.randperm(vocab, generator=gen)
        top = float(t[i].max())
        if kind == "confident_right":
            labels[i] = int(perm[0])
            t[i, labels[i]] = top + bump
        elif kind == "tie_label_first":  # label ties with a later index: argmax is the label (right)
            j, k = sorted(perm[:2].tolist())
            t[i, j] = t[i, k] = top + 1.0
            labels[i] = j
        elif kind == "tie_label_second":  # first tied index comes before the label: teacher wrong, p_a == p_y
            j, k = sorted(perm[:2].tolist())
            t[i, j] = t[i, k] = top + 1.0
            labels[i] = k
        elif kind == "tie_others":  # two tokens tie for the max; the label is a third token
            j, k = sorted(perm[:2].tolist())
            t[i, j] = t[i, k] = top + 1.0
            labels[i] = int(perm[2])
        else:
            labels[i] = -1  # decided after rounding to dtype, below
    t = (t * scale).to(dtype)
    tr = t.to(F64)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        a = int(torch.argmax(tr[i]))
        if kind == "right":
            labels[i] = a
        elif kind == "wrong":
            others = [j for j in torch.randperm(vocab, generator=gen).tolist() if tr[i, j] != tr[i, a]]
            labels[i] = others[0]
        elif kind == "wrong_close":  # the label is the runner-up
            order = torch.argsort(tr[i], descending=True, stable=True).tolist()
            labels[i] = next(j for j in order if tr[i, j] != tr[i, a])
    s = (0.7 * tr + torch.randn(n, vocab, generator=gen, dtype=F64).clamp(-3, 3) * scale).to(dtype)
    if width > vocab:
        pad = width - vocab
        if pad_fill == "large":
            fill_t = (40.0 + 5 * torch.rand(n, pad, generator=gen, dtype=F64)) * scale
            fill_s = (40.0 + 5 * torch.rand(n, pad, generator=gen, dtype=F64)) * scale
        else:
            fill_t = fill_s = torch.full((n, pad), float("-inf"), dtype=F64)
        t = torch.cat([t, fill_t.to(dtype)], dim=1)
        s = torch.cat([s, fill_s.to(dtype)], dim=1)
    return s.reshape(*lead, width), t.reshape(*lead, width), labels.reshape(lead)


def make_mask(lead: tuple, kind: str, *, seed: int):
    """None, a bool mask or float weights (with some zeros) shaped ``lead``."""
    if kind == "none":
        return None
    gen = torch.Generator().manual_seed(seed + 1000)
    if kind == "bool":
        mask = torch.rand(lead, generator=gen) < 0.7
        mask.view(-1)[0] = True
        return mask
    weights = 0.2 + 1.8 * torch.rand(lead, generator=gen)
    weights[torch.rand(lead, generator=gen) < 0.2] = 0.0
    weights.view(-1)[0] = 1.5
    return weights


def ignore_some(labels: torch.Tensor, *, seed: int, frac: float = 0.2, ignore_index: int = -100) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 2000)
    out = labels.clone()
    drop = torch.rand(labels.shape, generator=gen) < frac
    drop.view(-1)[0] = False
    out[drop] = ignore_index
    return out


def run_impl(student, teacher, labels, *, backward: bool = True, grad_output=None, **kwargs):
    """Call nemo_mft.mft_loss on a fresh leaf copy of ``student``; return (loss, grad or None)."""
    from nemo_mft import mft_loss

    s = student.detach().clone().requires_grad_(True)
    out = mft_loss(s, teacher.detach().clone(), labels.clone(), **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    if not backward:
        return out, None
    if loss.dim() == 0:
        loss.backward()
    else:
        g = torch.ones_like(loss) if grad_output is None else grad_output.to(loss.dtype)
        loss.backward(g)
    return out, s.grad
