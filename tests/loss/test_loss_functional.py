"""nemo_mft.mft_loss / MFTLoss / corrected_target against the float64 reference (single device).

Tolerances per dtype are in mft_cases.TOL (fp64 ~1e-10; fp32 ~1e-5 rel; bf16/fp16: reference on the same
rounded values upcast to fp64, loss rtol 1e-5, gradient within one 16-bit rounding step).
"""

from __future__ import annotations

import pytest
import torch

from mft_cases import (DTYPES, F64, TAUS, TEMPS, TOL, assert_grad_close, assert_loss_close, corrected_target_rows,
                       ignore_some, loss_dtype, make_inputs, make_mask, reference_mft, run_impl)

LAYOUTS = {
    # [N, V], every token valid, no padding.
    "2d": dict(lead=(28,), width=37, vocab=None, mask="none", ignore=False),
    # [B, S, V] with float weights (some 0), ignore_index rows and 5 padded vocab columns.
    "3d_masked_padded": dict(lead=(3, 9), width=40, vocab=35, mask="float", ignore=True),
}
REDUCTIONS = ["mean", "sum", "none"]


def _layout_inputs(layout: str, dtype, seed: int):
    cfg = LAYOUTS[layout]
    s, t, y = make_inputs(cfg["lead"], cfg["width"], dtype, seed=seed, vocab_size=cfg["vocab"])
    if cfg["ignore"]:
        y = ignore_some(y, seed=seed)
    mask = make_mask(cfg["lead"], cfg["mask"], seed=seed)
    return s, t, y, mask, cfg["vocab"]


def _grad_output(lead, seed):
    return 0.5 + torch.rand(lead, dtype=F64, generator=torch.Generator().manual_seed(seed + 77))


def _check_against_reference(s, t, y, dtype, *, impl="torch", reductions=REDUCTIONS, what="", **kw):
    for reduction in reductions:
        g = _grad_output(y.shape, 1) if reduction == "none" else None
        loss, grad = run_impl(s, t, y, reduction=reduction, impl=impl, grad_output=g, **kw)
        r = reference_mft(s, t, y, reduction=reduction, grad_output=g, **kw)
        tag = f"[{what} reduction={reduction} {kw}]"
        assert loss.dtype == loss_dtype(dtype), tag
        assert loss.shape == (y.shape if reduction == "none" else torch.Size([])), tag
        assert_loss_close(loss, r.loss, dtype, tag)
        assert_grad_close(grad, r.grad, dtype, tag, roundings=1 if g is None else 2)


@pytest.mark.parametrize("correct_all", [True, False])
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype, layout, tau, temperature, correct_all):
    s, t, y, mask, vocab = _layout_inputs(layout, dtype, seed=DTYPES.index(dtype) * 10 + len(layout))
    _check_against_reference(s, t, y, dtype, what=layout, tau=tau, temperature=temperature,
                             correct_all=correct_all, loss_mask=mask, vocab_size=vocab)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_impl_auto_matches_reference(dtype, layout):
    s, t, y, mask, vocab = _layout_inputs(layout, dtype, seed=5)
    _check_against_reference(s, t, y, dtype, impl="auto", what=layout, tau=0.25, temperature=2.0,
                             loss_mask=mask, vocab_size=vocab)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bool_mask_and_ignore_index(dtype):
    s, t, y = make_inputs((4, 8), 21, dtype, seed=21)
    y = ignore_some(y, seed=21)
    mask = make_mask((4, 8), "bool", seed=21)
    _check_against_reference(s, t, y, dtype, tau=0.25, loss_mask=mask)
    # A bool mask is the same as its 0/1 float version.
    a, ga = run_impl(s, t, y, tau=0.25, loss_mask=mask)
    b, gb = run_impl(s, t, y, tau=0.25, loss_mask=mask.float())
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ignore_index", [-1, 3])
def test_custom_ignore_index(ignore_index):
    s, t, y = make_inputs((30,), 19, torch.float32, seed=22)
    y = ignore_some(y, seed=22, ignore_index=ignore_index)
    assert (y == ignore_index).any()
    _check_against_reference(s, t, y, torch.float32, tau=0.25, ignore_index=ignore_index)
    if ignore_index >= 0:  # -100 is then an ordinary (invalid) value, not ignored
        return
    y2 = y.clone()
    y2[y == ignore_index] = -100
    a, _ = run_impl(s, t, y, tau=0.25, ignore_index=ignore_index)
    b, _ = run_impl(s, t, y2, tau=0.25)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pad_fill", ["large", "-inf"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_padded_vocab_is_excluded(dtype, pad_fill):
    """Columns >= vocab_size behave as if absent: same loss as the sliced logits, zero gradient there."""
    vocab, width = 29, 36
    s, t, y = make_inputs((2, 11), width, dtype, seed=23, vocab_size=vocab, pad_fill=pad_fill)
    mask = make_mask((2, 11), "float", seed=23)
    _check_against_reference(s, t, y, dtype, tau=0.25, temperature=2.0, loss_mask=mask, vocab_size=vocab)
    for reduction in REDUCTIONS:
        padded, gp = run_impl(s, t, y, tau=0.25, temperature=2.0, loss_mask=mask, vocab_size=vocab,
                              reduction=reduction)
        sliced, gs = run_impl(s[..., :vocab], t[..., :vocab], y, tau=0.25, temperature=2.0, loss_mask=mask,
                              reduction=reduction)
        tol = TOL[dtype]
        torch.testing.assert_close(padded, sliced, rtol=tol["loss_rtol"], atol=tol["loss_atol"])
        assert (gp[..., vocab:] == 0).all(), "padded columns must get exactly zero gradient"
        assert_grad_close(gp[..., :vocab], gs.to(F64), dtype)
    # vocab_size equal to the width is the same as no vocab_size.
    a, ga = run_impl(s[..., :vocab], t[..., :vocab], y, tau=0.25, vocab_size=vocab)
    b, gb = run_impl(s[..., :vocab], t[..., :vocab], y, tau=0.25)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["ignore_index", "zero_mask"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_ignored_batch(dtype, how):
    s, t, y = make_inputs((3, 4), 13, dtype, seed=24)
    mask = None
    if how == "ignore_index":
        y = torch.full_like(y, -100)
    else:
        mask = torch.zeros(3, 4)
    for reduction in REDUCTIONS:
        out, grad = run_impl(s, t, y, tau=0.25, loss_mask=mask, reduction=reduction, return_stats=True)
        loss, stats = out
        assert loss.dtype == loss_dtype(dtype)
        assert not torch.isnan(loss).any(), f"NaN loss with no valid token ({reduction})"
        assert (loss == 0).all(), f"loss {loss} with no valid token ({reduction})"
        assert grad is not None and grad.dtype == dtype
        assert (grad == 0).all(), f"gradient not exactly zero with no valid token ({reduction})"
        assert float(stats.weight_sum) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_values_in_ignored_rows_do_not_leak(dtype):
    """Ignored rows (label == ignore_index or weight 0) may hold NaN / inf: no error, no effect, zero grad."""
    s, t, y = make_inputs((4, 6), 17, dtype, seed=25)
    mask = torch.ones(4, 6)
    y[0, 1] = -100
    mask[2, 3] = 0
    y[3, 0] = -100
    s[0, 1, 4] = float("nan")
    t[0, 1, :] = float("inf")
    s[2, 3, :] = float("-inf")
    t[2, 3, 2] = float("nan")
    t[3, 0, :] = float("-inf")
    _check_against_reference(s, t, y, dtype, tau=0.25, loss_mask=mask)
    _, grad = run_impl(s, t, y, tau=0.25, loss_mask=mask)
    for i, j in ((0, 1), (2, 3), (3, 0)):
        assert (grad[i, j] == 0).all()


def test_minus_inf_columns_shared_by_both_models_are_allowed():
    """-inf in some (non-label) columns of a valid row, in both teacher and student: finite loss, as reference."""
    s, t, y = make_inputs((12,), 15, torch.float32, seed=26)
    for i in range(12):
        cols = [c for c in range(15) if c != int(y[i])][: 3 + i % 3]
        s[i, cols] = float("-inf")
        t[i, cols] = float("-inf")
    _check_against_reference(s, t, y, torch.float32, tau=0.25, temperature=2.0)


def _large_inputs(dtype):
    # Logits scaled by 1e4 (|values| up to ~6e4, still finite in fp16): one-hot-like teacher and student.
    s, t, y = make_inputs((21,), 26, dtype, seed=27, scale=1e4, teacher_scale=1.0, bump=1.0)
    assert torch.isfinite(s).all() and torch.isfinite(t).all()
    return s, t, y


@pytest.mark.parametrize("correct_all", [True, False])
@pytest.mark.parametrize("tau", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_logits_no_overflow(dtype, temperature, tau, correct_all):
    """1e4-scaled logits: finite loss and gradient, close to the reference (loose: loss rtol 1e-2, gradient
    1e-2 relative / 1e-3 of max|g|). The full-precision check is test_large_logits_full_precision."""
    s, t, y = _large_inputs(dtype)
    for reduction in ("mean", "none"):
        loss, grad = run_impl(s, t, y, tau=tau, temperature=temperature, correct_all=correct_all,
                              reduction=reduction)
        r = reference_mft(s, t, y, tau=tau, temperature=temperature, correct_all=correct_all, reduction=reduction)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), "overflow / NaN with large logits"
        torch.testing.assert_close(loss.detach().to(F64), r.loss, rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(grad.to(F64), r.grad, rtol=1e-2, atol=1e-3 * float(r.grad.abs().max()))


@pytest.mark.parametrize("correct_all", [True, False])
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_logits_full_precision(dtype, temperature, correct_all):
    """Same inputs at the normal per-dtype tolerances. Achievable in fp32: ModelOpt's fp32 loss on such a
    batch is within ~5e-8 of the float64 reference (softmax subtracts the row max before exponentiating)."""
    s, t, y = _large_inputs(dtype)
    _check_against_reference(s, t, y, dtype, tau=0.25, temperature=temperature, correct_all=correct_all,
                             reductions=["mean", "none"])


# Exact ties in the teacher (rows x label): the first maximal index is the argmax.
TIE_TEACHER = [
    [1.0, 3.0, 3.0, 0.0, -1.0],  # label 1: tie with a later index -> teacher right
    [1.0, 3.0, 3.0, 0.0, -1.0],  # label 2: first tied index (1) is before the label -> wrong, m = tau
    [1.0, 3.0, 3.0, 0.0, -1.0],  # label 4: tie among two other tokens -> wrong
    [2.0, 2.0, 2.0, 2.0, 2.0],  # uniform, label 0 -> right
    [2.0, 2.0, 2.0, 2.0, 2.0],  # uniform, label 3 -> wrong with p_a == p_y
    [0.5, 0.0, 0.5, 0.0, 0.5],  # three-way tie, label 2 -> wrong (argmax 0)
    [0.5, 1.0, 3.0, 3.0, -1.0],  # label 0: tie among others whose first index (2) is after the label -> wrong
]
TIE_LABELS = [1, 2, 4, 0, 3, 2, 0]
TIE_ARGMAX = [1, 1, 1, 0, 0, 0, 2]


@pytest.mark.parametrize("tau", [0.0, 0.25, 0.6])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exact_teacher_ties(dtype, tau):
    t = torch.tensor(TIE_TEACHER, dtype=dtype)
    y = torch.tensor(TIE_LABELS)
    s = torch.randn(len(TIE_LABELS), 5, generator=torch.Generator().manual_seed(28)).to(dtype)
    r = reference_mft(s, t, y, tau=tau)
    assert r.argmax.tolist() == TIE_ARGMAX
    _check_against_reference(s, t, y, dtype, tau=tau, temperature=1.0)
    _check_against_reference(s, t, y, dtype, tau=tau, temperature=2.0, correct_all=False)
    from nemo_mft import corrected_target

    q = corrected_target(t, y, tau=tau)
    qtol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(q.dtype, 2**-8)
    q = q.to(F64)
    torch.testing.assert_close(q, r.q, rtol=qtol, atol=qtol)
    # Label tied after the first maximal index: q_y - q_a = tau exactly (teacher counted wrong).
    torch.testing.assert_close(q[1, 2] - q[1, 1], torch.tensor(tau, dtype=F64), rtol=0, atol=10 * qtol)
    (_, stats), _ = run_impl(s, t, y, tau=tau, return_stats=True, backward=False)
    torch.testing.assert_close(stats.teacher_accuracy.to(F64), torch.tensor(2 / 7, dtype=F64),
                               rtol=1e-6, atol=1e-7)


# Worked examples of docs/method.md, section 1 (p given as probabilities -> logits = log p).
WORKED_P = [[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.85, 0.1, 0.05]]
WORKED_Y = [1, 0, 0]
WORKED_Q = [[4.8 / 13, 7.4 / 13, 0.8 / 13], [0.9, 0.2 / 3, 0.1 / 3], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_corrected_target_worked_examples(dtype):
    from nemo_mft import corrected_target

    logits = torch.tensor(WORKED_P, dtype=F64).log().to(dtype)
    q = corrected_target(logits, torch.tensor(WORKED_Y), tau=0.2)
    assert q.shape == logits.shape
    tol = 1e-12 if dtype == F64 else 1e-6
    torch.testing.assert_close(q.to(F64), torch.tensor(WORKED_Q, dtype=F64), rtol=tol, atol=tol)
    # Row by row as well (a 1-row batch and a [1, 1, V] batch).
    for i in range(3):
        qi = corrected_target(logits[i : i + 1], torch.tensor(WORKED_Y[i : i + 1]), tau=0.2)
        torch.testing.assert_close(qi[0].to(F64), torch.tensor(WORKED_Q[i], dtype=F64), rtol=tol, atol=tol)
    q3 = corrected_target(logits.reshape(1, 3, 3), torch.tensor([WORKED_Y]), tau=0.2)
    torch.testing.assert_close(q3.reshape(3, 3).to(F64), torch.tensor(WORKED_Q, dtype=F64), rtol=tol, atol=tol)


def test_worked_example_loss_and_gradient():
    """Loss on the worked examples equals KL(q || softmax(s)) with q from docs/method.md; grad = (softmax(s) - q)/3."""
    teacher = torch.tensor(WORKED_P, dtype=F64).log()
    student = torch.tensor([[0.2, 0.1, -0.3], [1.0, 0.0, 0.5], [0.0, 0.0, 0.0]], dtype=F64)
    qn = torch.tensor(WORKED_Q, dtype=F64)
    logr = torch.log_softmax(student, -1)
    per_tok = torch.where(qn > 0, qn * (qn.log() - logr), torch.zeros((), dtype=F64)).sum(-1)
    loss, grad = run_impl(student, teacher, torch.tensor(WORKED_Y), tau=0.2)
    torch.testing.assert_close(loss, per_tok.mean(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, (logr.exp() - qn) / 3, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("correct_all", [True, False])
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_corrected_target_matches_reference(dtype, tau, temperature, correct_all):
    from nemo_mft import corrected_target

    _, t, y = make_inputs((3, 7), 23, dtype, seed=29)
    q = corrected_target(t, y, tau=tau, temperature=temperature, correct_all=correct_all)
    assert q.shape == t.shape
    expected, _, _ = corrected_target_rows(t.reshape(21, 23).to(F64), y.reshape(21), tau, temperature, correct_all)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(q.dtype, 2**-8)
    torch.testing.assert_close(q.to(F64).reshape(21, 23), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(q.to(F64).sum(-1), torch.ones(3, 7, dtype=F64), rtol=0, atol=max(tol, 1e-6) * 23)


GRADCHECK_CASES = {
    "plain": dict(),
    "mask_ignore_padding_T2": dict(mask="float", ignore=True, vocab=9, temperature=2.0),
    "bool_mask_sum_incorrect_only": dict(mask="bool", reduction="sum", correct_all=False),
    "none_T2": dict(reduction="none", temperature=2.0, ignore=True),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck(case):
    """torch.autograd.gradcheck w.r.t. the student logits (fp64).

    The loss is piecewise in the TEACHER (argmax, the p_y > 1 - tau switch), but q is a constant w.r.t. the
    student, so the loss is smooth in the student logits; the inputs are random (no teacher ties near a
    switch point), so finite differences are valid.
    """
    from nemo_mft import mft_loss

    cfg = GRADCHECK_CASES[case]
    width = 12
    s, t, y = make_inputs((2, 5), width, F64, seed=30, vocab_size=cfg.get("vocab"), kinds=("right", "wrong"))
    if cfg.get("ignore"):
        y = ignore_some(y, seed=30, frac=0.3)
    mask = make_mask((2, 5), cfg.get("mask", "none"), seed=30)
    kw = dict(tau=0.25, temperature=cfg.get("temperature", 1.0), correct_all=cfg.get("correct_all", True),
              loss_mask=mask, vocab_size=cfg.get("vocab"), reduction=cfg.get("reduction", "mean"), impl="torch")
    s = s.clone().requires_grad_(True)

    def loss_of(x):
        loss = mft_loss(x, t, y, **kw)
        # gradcheck backpropagates through one call several times; an incoming gradient other than 1
        # is applied in place (a second backward then raises), so "none" is checked through its sum.
        # The per-token scaling is checked against the reference in the tests above.
        return loss.sum() if kw["reduction"] == "none" else loss

    assert torch.autograd.gradcheck(loss_of, (s,), eps=1e-6, atol=1e-7, rtol=1e-5)


STATS_CASES = {
    "fp64_plain": dict(dtype=torch.float64),
    "fp32_float_mask_padding_T2": dict(dtype=torch.float32, mask="float", vocab=30, temperature=2.0, ignore=True),
    "bf16_bool_mask_incorrect_only": dict(dtype=torch.bfloat16, mask="bool", correct_all=False, ignore=True),
    "fp16_tau0": dict(dtype=torch.float16, tau=0.0),
    "fp32_tau1": dict(dtype=torch.float32, tau=1.0, mask="float"),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(STATS_CASES))
def test_stats_match_reference(case, reduction):
    cfg = STATS_CASES[case]
    dtype = cfg["dtype"]
    s, t, y = make_inputs((3, 8), 33, dtype, seed=31, vocab_size=cfg.get("vocab"))
    if cfg.get("ignore"):
        y = ignore_some(y, seed=31)
    mask = make_mask((3, 8), cfg.get("mask", "none"), seed=31)
    kw = dict(tau=cfg.get("tau", 0.25), temperature=cfg.get("temperature", 1.0),
              correct_all=cfg.get("correct_all", True), loss_mask=mask, vocab_size=cfg.get("vocab"),
              reduction=reduction)
    (loss, stats), grad = run_impl(s, t, y, return_stats=True, **kw)
    r = reference_mft(s, t, y, **kw)
    assert_loss_close(loss, r.loss, dtype, case)
    assert_grad_close(grad, r.grad, dtype, case)
    tol = 1e-10 if dtype == F64 else 1e-5
    for name, expected in r.stats.items():
        value = getattr(stats, name)
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point(), name
        torch.testing.assert_close(value.detach().to(F64), expected, rtol=tol, atol=tol,
                                   msg=lambda m: f"stat {name} ({case})\n{m}")
    # The loss returned with stats is the loss returned without them.
    plain, _ = run_impl(s, t, y, backward=False, **kw)
    torch.testing.assert_close(plain, loss, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_module_equals_functional(dtype):
    from nemo_mft import MFTLoss, mft_loss

    s, t, y = make_inputs((2, 9), 27, dtype, seed=32, vocab_size=24)
    y = ignore_some(y, seed=32)
    mask = make_mask((2, 9), "float", seed=32)
    options = dict(tau=0.6, temperature=2.0, correct_all=False, ignore_index=-100, reduction="sum", impl="torch")
    module = MFTLoss(**options)
    assert isinstance(module, torch.nn.Module)
    assert len(list(module.parameters())) == 0
    s1 = s.clone().requires_grad_(True)
    loss1, stats1 = module(s1, t, y, loss_mask=mask, vocab_size=24, return_stats=True)
    loss1.backward()
    s2 = s.clone().requires_grad_(True)
    loss2, stats2 = mft_loss(s2, t, y, loss_mask=mask, vocab_size=24, return_stats=True, **options)
    loss2.backward()
    torch.testing.assert_close(loss1, loss2, rtol=0, atol=0)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0, atol=0)
    for name in ("teacher_accuracy", "mixing_weight", "student_ce", "weight_sum"):
        torch.testing.assert_close(getattr(stats1, name), getattr(stats2, name), rtol=0, atol=0)
    # Without stats the module returns a tensor, and defaults match the functional defaults.
    out = MFTLoss()(s, t, y, loss_mask=mask, vocab_size=24)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, mft_loss(s, t, y, loss_mask=mask, vocab_size=24), rtol=0, atol=0)
    r = reference_mft(s, t, y, loss_mask=mask, vocab_size=24, tau=0.25)
    assert_loss_close(out, r.loss, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reduction_none_shape_and_sums(dtype):
    from nemo_mft import mft_loss

    s, t, y = make_inputs((3, 5), 19, dtype, seed=33, vocab_size=17)
    y = ignore_some(y, seed=33)
    mask = make_mask((3, 5), "float", seed=33)
    kw = dict(tau=0.25, temperature=2.0, loss_mask=mask, vocab_size=17)
    none = mft_loss(s, t, y, reduction="none", **kw)
    assert none.shape == y.shape and none.dtype == loss_dtype(dtype)
    total = mft_loss(s, t, y, reduction="sum", **kw)
    mean = mft_loss(s, t, y, reduction="mean", **kw)
    tol = TOL[dtype]
    torch.testing.assert_close(none.sum(), total, rtol=tol["loss_rtol"], atol=tol["loss_atol"])
    w = torch.where(y == -100, torch.zeros(()), mask)
    torch.testing.assert_close(mean.to(F64), total.to(F64) / w.sum().to(F64), rtol=tol["loss_rtol"],
                               atol=tol["loss_atol"])
    assert (none[w == 0] == 0).all(), "ignored / zero-weight tokens must have zero per-token loss"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradient_flows_only_to_student(dtype):
    from nemo_mft import mft_loss

    s, t, y = make_inputs((2, 6), 21, dtype, seed=34)
    # Teacher that requires grad: it must not receive any.
    ss = s.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(True)
    mft_loss(ss, tt, y, tau=0.25).backward()
    assert tt.grad is None or (tt.grad == 0).all(), "teacher logits received a gradient"
    assert ss.grad is not None and ss.grad.dtype == dtype
    # Non-leaf student from a linear layer (fp32 master weight): the chain rule reaches the weight.
    gen = torch.Generator().manual_seed(35)
    hidden = torch.randn(2, 6, 8, generator=gen, dtype=F64)
    weight = torch.randn(8, 21, generator=gen, dtype=F64, requires_grad=True)
    student = (hidden @ weight).to(dtype)
    mft_loss(student, t, y, tau=0.25).backward()
    r = reference_mft(student.detach(), t, y, tau=0.25)
    expected = torch.einsum("bsh,bsv->hv", hidden, r.grad)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(weight.grad, expected, rtol=tol, atol=tol * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inputs_are_not_modified_and_noncontiguous_inputs_work(dtype):
    from nemo_mft import mft_loss

    s, t, y = make_inputs((4, 5), 23, dtype, seed=36, vocab_size=20)
    mask = make_mask((4, 5), "float", seed=36)
    # Non-contiguous views: logits transposed back and forth, labels / mask strided.
    s_nc = s.transpose(0, 1).contiguous().transpose(0, 1)
    t_nc = t.transpose(0, 1).contiguous().transpose(0, 1)
    y_nc = y.t().contiguous().t()
    m_nc = mask.t().contiguous().t()
    assert not s_nc.is_contiguous() and not y_nc.is_contiguous()
    s_leaf = s_nc.detach().requires_grad_(True)
    s_before, t_before = s_leaf.detach().clone(), t_nc.clone()
    loss = mft_loss(s_leaf, t_nc, y_nc, tau=0.25, loss_mask=m_nc, vocab_size=20)
    loss.backward()
    assert torch.equal(s_leaf.detach(), s_before), "student logits modified in place"
    assert torch.equal(t_nc, t_before), "teacher logits modified in place"
    r = reference_mft(s, t, y, tau=0.25, loss_mask=mask, vocab_size=20)
    assert_loss_close(loss, r.loss, dtype)
    assert_grad_close(s_leaf.grad, r.grad, dtype)


@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_distill_only_is_plain_distillation(dtype, layout, temperature):
    """distill_only: q = p on every row (the KD baseline); tau and correct_all have no effect."""
    s, t, y, mask, vocab = _layout_inputs(layout, dtype, seed=5)
    for tau in (0.0, 0.25):
        _check_against_reference(s, t, y, dtype, what=layout, tau=tau, temperature=temperature,
                                 distill_only=True, loss_mask=mask, vocab_size=vocab)
    from nemo_mft import mft_loss

    _, stats = mft_loss(s, t, y, tau=0.25, temperature=temperature, distill_only=True, loss_mask=mask,
                        vocab_size=vocab, return_stats=True)
    assert float(stats.mixing_weight) == 0.0


def test_tau_zero_is_not_plain_distillation():
    """tau = 0 still lifts a wrong label to a tie with the argmax: not the same as distill_only."""
    from nemo_mft import corrected_target

    t = torch.tensor([[2.0, 0.0, -1.0]], dtype=F64)
    y = torch.tensor([1])
    q_tau0 = corrected_target(t, y, tau=0.0)
    p = torch.softmax(t, -1)
    assert torch.isclose(q_tau0[0, 0], q_tau0[0, 1]) and not torch.allclose(q_tau0, p)
    r = reference_mft(t, t, y, tau=0.0, distill_only=True)
    torch.testing.assert_close(r.q, p)


@pytest.mark.parametrize("inplace_grad", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_incoming_gradient_scales_the_stored_gradient_once(dtype, reduction, inplace_grad):
    """(c * loss).backward(), c a scalar or, for "none", one factor per token: the unit gradient times c
    with the factor in fp32 (1/3 is not rounded to bf16 first), written over the stored gradient (no new
    logits-sized buffer); a second backward through the same call raises instead of scaling twice."""
    from nemo_mft import mft_loss

    s, t, y = make_inputs((5, 7), 53, dtype, seed=5)
    kwargs = dict(tau=0.25, temperature=1.3, reduction=reduction, inplace_grad=inplace_grad)
    _, unit = run_impl(s, t, y, **kwargs)  # "none": incoming gradient all ones, nothing scaled
    if reduction == "none":
        c = (1.0 + torch.arange(35, dtype=torch.float32).view(5, 7)) / 3.0
        per_row = c.unsqueeze(-1)
    else:
        c = per_row = 1.0 / 3.0
    leaf = s.detach().clone().requires_grad_()
    loss = mft_loss(leaf, t, y, **kwargs)
    (loss * c).sum().backward(retain_graph=True)
    assert leaf.grad.dtype == dtype
    assert torch.equal(leaf.grad, (unit.float() * per_row).to(dtype))
    g = c if reduction == "none" else None
    expected = reference_mft(s, t, y, tau=0.25, temperature=1.3, reduction=reduction, grad_output=g).grad
    if g is None:
        expected = expected * c
    tol = TOL[dtype]  # two roundings for 16-bit logits: the gradient, then the scaled gradient
    torch.testing.assert_close(leaf.grad.double(), expected, rtol=2 * tol["grad_rtol"],
                               atol=2 * tol["grad_atol_rel"] * float(expected.abs().max()))
    if inplace_grad:
        assert leaf.grad.data_ptr() == leaf.data_ptr()  # scaled where forward wrote it
    with pytest.raises(RuntimeError, match="second backward through the same loss call"):
        (loss * 2.0).sum().backward()
