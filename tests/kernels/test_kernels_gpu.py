"""GPU validation of the fused Triton MFT kernels (compiled for real); every test skips without CUDA.

Collects all device-agnostic cases of `kernel_cases.py` (run on CUDA here) and adds what the CPU
interpreter cannot check: correct bf16 rounding (once, to nearest even), int64 offsets with
N * V_local > 2^31, realistic vocabulary sizes with the default launch configuration, and a
non-current GPU.
"""

from __future__ import annotations

import pytest
import torch

from kernel_cases import *  # noqa: F401,F403 - the shared cases, collected here on CUDA
from kernel_cases import make_inputs, reference, run_loss

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

from nemo_mft import mft_loss  # noqa: E402


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers at |x| (float64)."""
    mag = x.abs().clamp_min(torch.finfo(torch.bfloat16).tiny)
    return torch.exp2(torch.floor(torch.log2(mag)) - 7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_bf16_gradient_is_rounded_once(temperature):
    """The bf16 gradient equals the fp32 torch gradient rounded once (up to last-bit disagreements where
    the fp32 value sits within fp32 error of a rounding midpoint), and is within half an ulp (plus fp32
    error) of the float64 truth: no double rounding, no bf16 arithmetic."""
    n, width = 256, 50257
    student, teacher, labels, _ = make_inputs(n, width, torch.bfloat16, seed=21, device="cuda")
    kwargs = dict(tau=0.25, temperature=temperature)
    _, grad_tr = run_loss(student, teacher, labels, "triton", **kwargs)
    _, grad_32 = run_loss(student.float(), teacher.float(), labels, "torch", **kwargs)
    assert grad_tr.dtype == torch.bfloat16 and grad_32.dtype == torch.float32
    rounded_once = grad_32.to(torch.bfloat16)
    same = (grad_tr == rounded_once).double().mean().item()
    assert same >= 0.999, f"only {same:.5f} of the bf16 gradient equals the fp32 gradient rounded once"
    diff = (grad_tr.double() - rounded_once.double()).abs()
    assert (diff <= _bf16_ulp(grad_32.double()) * 1.0001).all()

    _, grad_64 = reference(student, teacher, labels, **kwargs)
    grad_64 = grad_64.cuda()
    row_scale = grad_64.abs().amax(-1, keepdim=True)
    err = (grad_tr.double() - grad_64).abs()
    bound = 0.5 * _bf16_ulp(grad_64) + 1e-6 * row_scale
    assert (err <= bound).all(), f"{int((err > bound).sum())} elements beyond half an ulp of the truth"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_realistic_vocab_default_blocks(dtype):
    """V = 128256 (Llama 3, not a multiple of the block), padded to 128320, default launch config."""
    n, width, vocab = 384, 128320, 128256
    student, teacher, labels, mask = make_inputs(n, width, dtype, seed=22, vocab_size=vocab, device="cuda",
                                                 weights=True)
    for temperature in (1.0, 1.5):
        kwargs = dict(tau=0.25, temperature=temperature, loss_mask=mask, vocab_size=vocab)
        loss_tr, grad_tr = run_loss(student, teacher, labels, "triton", **kwargs)
        loss_pt, grad_pt = run_loss(student, teacher, labels, "torch", **kwargs)
        torch.testing.assert_close(loss_tr, loss_pt, rtol=1e-5, atol=1e-6)
        tol = dict(rtol=1e-4, atol=1e-5 * grad_pt.abs().max().item()) if dtype == torch.float32 else \
            dict(rtol=2.0 ** -7, atol=1e-5 * grad_pt.float().abs().max().item())
        torch.testing.assert_close(grad_tr.float(), grad_pt.float(), **tol)
        assert (grad_tr[:, vocab:] == 0).all()
        # In place: identical numbers, written into the logits' buffer.
        logits = student.clone().requires_grad_()
        loss = mft_loss(logits, teacher, labels, impl="triton", inplace_grad=True, **kwargs)
        assert torch.equal(loss, loss_tr) and torch.equal(logits.detach(), grad_tr)


def test_int64_offsets_beyond_2_pow_31():
    """N * V_local > 2^31 elements: rows past the int32 range are read and written where they belong."""
    n, width = 16500, 131072
    assert n * width > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("needs ~12 GiB of free GPU memory")
    g = torch.Generator(device="cuda").manual_seed(23)
    teacher = torch.randn(n, width, device="cuda", dtype=torch.bfloat16, generator=g)
    student = torch.randn(n, width, device="cuda", dtype=torch.bfloat16, generator=g)
    labels = torch.randint(0, width, (n,), device="cuda", generator=g)
    rows = torch.tensor([0, 1, 2, n // 2, n - 3, n - 2, n - 1], device="cuda")  # n - 3: offset > 2^31
    mask = torch.zeros(n, device="cuda")
    mask[rows] = 1.0
    expected_loss, expected_grad = run_loss(student[rows], teacher[rows], labels[rows], "torch", tau=0.25,
                                            reduction="sum")
    del g
    student.requires_grad_()
    loss = mft_loss(student, teacher, labels, tau=0.25, loss_mask=mask, reduction="sum", impl="triton",
                    inplace_grad=True)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    grad = student.detach()  # in place
    torch.testing.assert_close(grad[rows].float(), expected_grad.float(), rtol=2.0 ** -7,
                               atol=1e-5 * expected_grad.float().abs().max().item())
    assert (grad[3:n // 2] == 0).all() and (grad[n // 2 + 1:n - 3] == 0).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_logits_on_a_non_current_gpu():
    student, teacher, labels, _ = make_inputs(8, 5000, torch.bfloat16, seed=24, device="cuda:1")
    with torch.cuda.device(0):
        loss_tr, grad_tr = run_loss(student, teacher, labels, "triton", tau=0.25)
    loss_pt, grad_pt = run_loss(student, teacher, labels, "torch", tau=0.25)
    assert grad_tr.device == torch.device("cuda:1")
    torch.testing.assert_close(loss_tr, loss_pt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_tr.float(), grad_pt.float(), rtol=2.0 ** -7, atol=1e-7)
