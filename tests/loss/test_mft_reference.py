"""Self-checks of the float64 reference (tests/loss/reference.py), independent of the implementation."""

from __future__ import annotations

import pytest
import torch

from mft_cases import (F64, ROW_KINDS, TAUS, TEMPS, corrected_target_rows, ignore_some, make_inputs, make_mask,
                       reference_autograd, reference_mft)

# Worked examples of docs/method.md, section 1: (p, y, tau, expected q).
WORKED = [
    ([0.6, 0.3, 0.1], 1, 0.2, [4.8 / 13, 7.4 / 13, 0.8 / 13]),  # teacher wrong, m = 5/13
    ([0.7, 0.2, 0.1], 0, 0.2, [0.9, 0.2 / 3, 0.1 / 3]),  # teacher right, c = 0.9, m = 2/3
    ([0.85, 0.1, 0.05], 0, 0.2, [1.0, 0.0, 0.0]),  # confidently right -> one-hot
]


@pytest.mark.parametrize("p, y, tau, expected", WORKED)
def test_reference_worked_examples(p, y, tau, expected):
    logits = torch.tensor([p], dtype=F64).log()
    q, m, a = corrected_target_rows(logits, torch.tensor([y]), tau, 1.0, True)
    torch.testing.assert_close(q[0], torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_reference_worked_example_mixing_weights():
    logits = torch.tensor([w[0] for w in WORKED], dtype=F64).log()
    _, m, a = corrected_target_rows(logits, torch.tensor([1, 0, 0]), 0.2, 1.0, True)
    torch.testing.assert_close(m, torch.tensor([5 / 13, 2 / 3, 1.0], dtype=F64), rtol=1e-12, atol=1e-12)
    assert a.tolist() == [0, 0, 0]


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("temperature", TEMPS)
def test_reference_target_invariants(tau, temperature):
    """q is a distribution; wrong rows: q_y - q_a = tau; right rows: q_y = min(1, p_y + tau) (or 1 above 1-tau)."""
    s, t, y = make_inputs((42,), 23, F64, seed=3)
    q, m, a = corrected_target_rows(t, y, tau, temperature, True)
    p = torch.softmax(t / temperature, dim=-1)
    torch.testing.assert_close(q.sum(-1), torch.ones(42, dtype=F64), rtol=1e-12, atol=1e-12)
    assert (q >= 0).all() and ((m >= 0) & (m <= 1 + 1e-12)).all()
    rows = torch.arange(42)
    wrong = a != y
    assert wrong.any() and (~wrong).any()
    qy, qa, py = q[rows, y], q[rows, a], p[rows, y]
    torch.testing.assert_close(qy[wrong] - qa[wrong], torch.full_like(qy[wrong], tau), rtol=0, atol=1e-12)
    expected_c = torch.where(py > 1 - tau, torch.ones_like(py), py + tau)
    torch.testing.assert_close(qy[~wrong], expected_c[~wrong], rtol=0, atol=1e-12)
    # Ties: the first maximal index wins.
    for i, kind in enumerate(ROW_KINDS * 6):
        if kind == "tie_label_first":
            assert a[i] == y[i]
        elif kind == "tie_label_second":
            assert a[i] < y[i] and p[i, a[i]] == p[i, y[i]]
            torch.testing.assert_close(m[i], torch.tensor(tau, dtype=F64))


def test_reference_incorrect_only_keeps_right_rows():
    s, t, y = make_inputs((21,), 17, F64, seed=4)
    q, m, a = corrected_target_rows(t, y, 0.25, 1.0, False)
    right = a == y
    torch.testing.assert_close(q[right], torch.softmax(t[right], -1), rtol=0, atol=0)
    assert (m[right] == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("variant", ["plain", "masked_padded_T2", "bool_incorrect_only", "all_ignored"])
def test_reference_closed_form_gradient_matches_autograd(reduction, variant):
    lead, width, vocab, temperature, correct_all = (3, 7), 19, None, 1.0, True
    mask_kind = "none"
    if variant == "masked_padded_T2":
        vocab, temperature, mask_kind = 15, 2.0, "float"
    elif variant == "bool_incorrect_only":
        correct_all, mask_kind = False, "bool"
    s, t, y = make_inputs(lead, width, F64, seed=5, vocab_size=vocab)
    y = ignore_some(y, seed=5)
    if variant == "all_ignored":
        y = torch.full_like(y, -100)
    mask = make_mask(lead, mask_kind, seed=5)
    g = torch.rand(lead, dtype=F64, generator=torch.Generator().manual_seed(9)) if reduction == "none" else None
    kw = dict(tau=0.25, temperature=temperature, correct_all=correct_all, loss_mask=mask, vocab_size=vocab,
              reduction=reduction, grad_output=g)
    r = reference_mft(s, t, y, **kw)
    loss, grad = reference_autograd(s, t, y, **kw)
    torch.testing.assert_close(r.loss, loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.grad, grad, rtol=1e-10, atol=1e-13)
    if vocab is not None:
        assert (r.grad[..., vocab:] == 0).all()
    if variant == "all_ignored":
        assert (r.grad == 0).all() and (r.loss == 0).all()
