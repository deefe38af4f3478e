"""The authors' code (ModelOpt ``MFTLoss``) as an oracle, for both the reference and the implementation.

ModelOpt only covers: correct_all=True, 2-D logits / 1-D labels, every row valid, no padding, "batchmean"
(= our "mean" with unit weights). Tolerances: ModelOpt adds 1e-7 to the denominators of m, so its q differs
from the exact q by at most ~2e-7 in L1 norm per row (for teacher-right rows m's relative error is
1e-7 / (1 - p_y), but it multiplies (e_y - p), whose mass off y is 1 - p_y). That moves the loss by
~1e-7 * |log q| per token and the gradient by ~T * 2e-7 / N per element: hence rtol 1e-6 with a small
absolute floor, instead of the 1e-10 we use against our float64 reference. In float32 both sides also
carry fp32 rounding (rtol 1e-5).
"""

from __future__ import annotations

import pytest
import torch

from mft_cases import F64, TAUS, TEMPS, make_inputs, reference_mft, run_impl

# Importing ModelOpt pulls in megatron-core, which warns about missing Apex / Transformer Engine.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

MODELOPT_TOL = {
    torch.float64: dict(loss_rtol=1e-6, loss_atol=5e-6, grad_rtol=1e-6, grad_atol_rel=1e-5),
    torch.float32: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=1e-5, grad_atol_rel=2e-5),
}


@pytest.fixture(scope="module")
def modelopt_cls():
    from modelopt.torch.distill import MFTLoss as ModelOptMFTLoss

    return ModelOptMFTLoss


def _modelopt(cls, s, t, y, tau, temperature):
    s = s.detach().clone().requires_grad_(True)
    loss = cls(temperature=temperature, threshold=tau)(s, t.detach().clone(), y)
    loss.backward()
    return loss.detach(), s.grad


def _close(actual, expected, tol, what, kind):
    if kind == "loss":
        torch.testing.assert_close(actual.to(F64), expected.to(F64), rtol=tol["loss_rtol"], atol=tol["loss_atol"],
                                   msg=lambda m: f"{what} loss\n{m}")
    else:
        atol = tol["grad_atol_rel"] * float(expected.abs().max())
        torch.testing.assert_close(actual.to(F64), expected.to(F64), rtol=tol["grad_rtol"], atol=atol,
                                   msg=lambda m: f"{what} grad\n{m}")


def _inputs(dtype, seed, scale=1.0):
    # 2-D, every row valid; rows: right, wrong, confidently right, exact ties (label first / second / other).
    kw = dict(teacher_scale=1.0, bump=1.0) if scale != 1.0 else {}
    return make_inputs((35,), 29, dtype, seed=seed, scale=scale, **kw)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("temperature", TEMPS)
def test_reference_matches_modelopt(modelopt_cls, tau, temperature):
    s, t, y = _inputs(F64, seed=11)
    mo_loss, mo_grad = _modelopt(modelopt_cls, s, t, y, tau, temperature)
    r = reference_mft(s, t, y, tau=tau, temperature=temperature)
    _close(r.loss, mo_loss, MODELOPT_TOL[F64], "reference vs modelopt", "loss")
    _close(r.grad, mo_grad, MODELOPT_TOL[F64], "reference vs modelopt", "grad")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_implementation_matches_modelopt(modelopt_cls, dtype, tau, temperature, impl):
    s, t, y = _inputs(dtype, seed=12)
    mo_loss, mo_grad = _modelopt(modelopt_cls, s, t, y, tau, temperature)
    loss, grad = run_impl(s, t, y, tau=tau, temperature=temperature, impl=impl)
    assert loss.dtype == (F64 if dtype == F64 else torch.float32)
    assert grad.dtype == dtype
    _close(loss, mo_loss, MODELOPT_TOL[dtype], "impl vs modelopt", "loss")
    _close(grad, mo_grad, MODELOPT_TOL[dtype], "impl vs modelopt", "grad")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_implementation_matches_modelopt_3d_batchmean(modelopt_cls, dtype):
    """[B, S, V] input against ModelOpt on the flattened rows (ModelOpt's batchmean divides by B*S)."""
    s, t, y = make_inputs((5, 7), 31, dtype, seed=13)
    mo_loss, mo_grad = _modelopt(modelopt_cls, s.reshape(35, 31), t.reshape(35, 31), y.reshape(35), 0.25, 2.0)
    loss, grad = run_impl(s, t, y, tau=0.25, temperature=2.0, impl="torch")
    _close(loss, mo_loss, MODELOPT_TOL[dtype], "impl vs modelopt (3-D)", "loss")
    _close(grad.reshape(35, 31), mo_grad, MODELOPT_TOL[dtype], "impl vs modelopt (3-D)", "grad")


@pytest.mark.parametrize("tau", [0.05, 0.25])
def test_implementation_matches_modelopt_large_logits(modelopt_cls, tau):
    """Logits scaled by 1e4 (fp32): near one-hot distributions, no overflow in either."""
    s, t, y = _inputs(torch.float32, seed=14, scale=1e4)
    mo_loss, mo_grad = _modelopt(modelopt_cls, s, t, y, tau, 1.0)
    loss, grad = run_impl(s, t, y, tau=tau, impl="torch")
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    _close(loss, mo_loss, MODELOPT_TOL[torch.float32], "impl vs modelopt (1e4 logits)", "loss")
    _close(grad, mo_grad, MODELOPT_TOL[torch.float32], "impl vs modelopt (1e4 logits)", "grad")
