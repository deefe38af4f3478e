"""In-process checks that launch no Triton kernel: backend selection, the CPU error of impl="triton",
and the `inplace_grad` option on the torch path (the Triton path's in-place tests are in
`kernel_cases.py`)."""

from __future__ import annotations

import pytest
import torch

from nemo_mft import MFTLoss, MFTOptions, mft_loss
from nemo_mft.loss.backends import TorchBackend, select_backend


def _inputs(n=6, width=97, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, width, generator=g) * 3
    student = (teacher + torch.randn(n, width, generator=g)).to(dtype)
    labels = torch.randint(0, width - 10, (n,), generator=g)  # < the vocab_size=90 used below
    labels[1] = -100
    return student, teacher.to(dtype), labels


def test_auto_uses_torch_on_cpu():
    assert isinstance(select_backend("auto", torch.device("cpu")), TorchBackend)
    assert isinstance(select_backend("torch", torch.device("cpu")), TorchBackend)


def test_triton_on_cpu_tensors_is_a_clear_error():
    triton_backend = pytest.importorskip("nemo_mft.kernels.triton_backend")
    if triton_backend.INTERPRETED:
        pytest.skip("this process defined the kernels under TRITON_INTERPRET=1: they run on CPU")
    student, teacher, labels = _inputs()
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors"):
            mft_loss(student.to(dtype), teacher.to(dtype), labels, impl="triton")


def test_inplace_grad_option_is_validated():
    assert MFTOptions().inplace_grad is False
    with pytest.raises(ValueError, match="inplace_grad must be a bool"):
        MFTOptions(inplace_grad=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_path_inplace_gradient(dtype, reduction):
    student, teacher, labels = _inputs(dtype=dtype)
    kwargs = dict(tau=0.25, temperature=1.5, reduction=reduction, vocab_size=90, impl="torch")
    reference = student.clone().requires_grad_()
    ref_loss = mft_loss(reference, teacher, labels, **kwargs)
    ref_loss.sum().backward()
    assert torch.equal(reference.detach(), student)  # default: out of place, logits untouched

    leaf = student.clone().requires_grad_()
    loss = MFTLoss(tau=0.25, temperature=1.5, reduction=reduction, impl="torch", inplace_grad=True)(
        leaf, teacher, labels, vocab_size=90
    )
    assert torch.equal(loss, ref_loss)
    assert torch.equal(leaf.detach(), reference.grad)  # forward left the gradient in the buffer
    loss.sum().backward()
    assert torch.equal(leaf.grad, reference.grad)


def test_torch_path_inplace_detects_saved_logits():
    student, teacher, labels = _inputs()
    x = student.clone().requires_grad_()
    loss = mft_loss(torch.tanh(x), teacher, labels, tau=0.25, impl="torch", inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
