"""Bad input raises ValueError with a message naming the problem (single device; the TP case is in
test_loss_tensor_parallel.py)."""

from __future__ import annotations

import re

import pytest
import torch

from mft_cases import make_inputs

VOCAB = 13


def _inputs(lead=(4, 6), width=VOCAB, dtype=torch.float32, seed=40):
    return make_inputs(lead, width, dtype, seed=seed, kinds=("right", "wrong"))


def _call(s, t, y, **kw):
    from nemo_mft import mft_loss

    return mft_loss(s, t, y, **kw)


def test_bad_labels_report_count_and_first_position():
    s, t, y = _inputs()
    # 5 bad labels (too large, negative but not ignore_index); the first one at (1, 3) = flat index 9.
    bad = {(1, 3): VOCAB, (1, 4): 100, (2, 3): -1, (3, 2): -7, (3, 5): VOCAB + 1}
    for pos, value in bad.items():
        y[pos] = value
    y[0, 0] = -100  # ignore_index is fine
    with pytest.raises(ValueError) as info:
        _call(s, t, y)
    msg = str(info.value)
    assert re.search(r"label", msg, re.I), msg
    assert re.search(r"\b5\b", msg), f"count 5 missing: {msg}"
    assert re.search(r"\(1, 3\)|\[1, 3\]|\b9\b", msg), f"first position (1, 3) / 9 missing: {msg}"


def test_bad_labels_1d():
    s, t, y = _inputs(lead=(10,), width=17)
    y[4], y[7] = 17, 30
    with pytest.raises(ValueError) as info:
        _call(s, t, y)
    msg = str(info.value)
    assert re.search(r"label", msg, re.I) and re.search(r"\b2\b", msg) and re.search(r"\b4\b", msg), msg


def test_negative_label_other_than_ignore_index():
    s, t, y = _inputs()
    y[2, 2] = -100
    _call(s, t, y)  # fine
    y[2, 2] = -5
    with pytest.raises(ValueError, match=r"(?i)label"):
        _call(s, t, y)
    # With a custom ignore_index, -100 is an ordinary out-of-range value.
    y[2, 2] = -100
    with pytest.raises(ValueError, match=r"(?i)label"):
        _call(s, t, y, ignore_index=-1)


def test_label_in_padded_columns():
    s, t, y = _inputs()
    y[1, 1] = VOCAB - 1
    _call(s, t, y)  # fine without vocab_size
    with pytest.raises(ValueError, match=r"(?i)label"):
        _call(s, t, y, vocab_size=VOCAB - 2)


@pytest.mark.parametrize("case", ["teacher_rows", "labels_rows", "labels_flat", "mask_shape", "mask_flat"])
def test_mismatched_shapes(case):
    s, t, y = _inputs()
    mask = None
    if case == "teacher_rows":
        t = t[:, :5]
    elif case == "labels_rows":
        y = y[:, :5]
    elif case == "labels_flat":  # same number of tokens, different shape
        y = y.reshape(24)
    elif case == "mask_shape":
        mask = torch.ones(4, 5)
    elif case == "mask_flat":
        mask = torch.ones(24)
    with pytest.raises(ValueError, match=r"(?i)shape|match|size"):
        _call(s, t, y, loss_mask=mask)


def test_student_and_teacher_vocab_width_differ():
    s, t, y = _inputs()
    with pytest.raises(ValueError, match=r"(?i)vocab|width|shape|size"):
        _call(s, t[..., : VOCAB - 1], y % (VOCAB - 1))


@pytest.mark.parametrize("tau", [-0.01, 1.01, 2.0, float("nan")])
def test_tau_out_of_range(tau):
    s, t, y = _inputs()
    with pytest.raises(ValueError, match=r"(?i)tau"):
        _call(s, t, y, tau=tau)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_not_positive(temperature):
    s, t, y = _inputs()
    with pytest.raises(ValueError, match=r"(?i)temperature"):
        _call(s, t, y, temperature=temperature)


@pytest.mark.parametrize("reduction", ["avg", "batchmean", "MEAN "])
def test_unknown_reduction(reduction):
    s, t, y = _inputs()
    with pytest.raises(ValueError, match=r"(?i)reduction"):
        _call(s, t, y, reduction=reduction)


@pytest.mark.parametrize("impl", ["cuda", "fused", ""])
def test_unknown_impl(impl):
    s, t, y = _inputs()
    with pytest.raises(ValueError, match=r"(?i)impl"):
        _call(s, t, y, impl=impl)


def test_vocab_size_larger_than_logits():
    s, t, y = _inputs()
    _call(s, t, y, vocab_size=VOCAB)  # equal is fine
    with pytest.raises(ValueError, match=r"(?i)vocab"):
        _call(s, t, y, vocab_size=VOCAB + 1)


NONFINITE = {
    "student_nan": ("s", "nan_one"),
    "teacher_nan": ("t", "nan_one"),
    "student_plus_inf": ("s", "inf_one"),
    "teacher_plus_inf": ("t", "inf_one"),
    "student_row_all_minus_inf": ("s", "all_minus_inf"),
    "teacher_row_all_minus_inf": ("t", "all_minus_inf"),
    "teacher_real_columns_all_minus_inf_padding_finite": ("t", "real_minus_inf"),
}


@pytest.mark.parametrize("case", list(NONFINITE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nonfinite_logits_in_valid_rows(case, dtype):
    which, kind = NONFINITE[case]
    s, t, y = _inputs(dtype=dtype)
    target = s if which == "s" else t
    vocab = None
    if kind == "nan_one":
        target[2, 1, 5] = float("nan")
    elif kind == "inf_one":
        target[2, 1, 5] = float("inf")
    elif kind == "all_minus_inf":
        target[2, 1, :] = float("-inf")
    else:  # only the padding columns of the row are finite: the row has no finite real logit
        vocab = VOCAB - 3
        y = y % vocab
        target[2, 1, :vocab] = float("-inf")
    with pytest.raises(ValueError, match=r"(?i)finite|nan|inf"):
        _call(s, t, y, vocab_size=vocab)
    # The same row is fine once it is ignored (label == ignore_index) or weighted 0.
    y_ignored = y.clone()
    y_ignored[2, 1] = -100
    loss = _call(s, t, y_ignored, vocab_size=vocab)
    assert torch.isfinite(loss)
    mask = torch.ones(4, 6)
    mask[2, 1] = 0
    loss2 = _call(s, t, y, loss_mask=mask, vocab_size=vocab)
    torch.testing.assert_close(loss2, loss, rtol=1e-6, atol=1e-6)


def test_module_rejects_bad_options():
    """MFTLoss may validate at construction or at the first call; either way a ValueError naming the option."""
    from nemo_mft import MFTLoss

    s, t, y = _inputs()
    for kwargs, pattern in [(dict(tau=1.5), "tau"), (dict(temperature=0.0), "temperature"),
                            (dict(reduction="avg"), "reduction"), (dict(impl="cuda"), "impl")]:
        with pytest.raises(ValueError, match=rf"(?i){pattern}"):
            MFTLoss(**kwargs)(s, t, y)
    y[0, 0] = VOCAB
    with pytest.raises(ValueError, match=r"(?i)label"):
        MFTLoss()(s, t, y)


def test_corrected_target_validates():
    from nemo_mft import corrected_target

    _, t, y = _inputs()
    with pytest.raises(ValueError, match=r"(?i)tau"):
        corrected_target(t, y, tau=1.5)
    with pytest.raises(ValueError, match=r"(?i)temperature"):
        corrected_target(t, y, tau=0.2, temperature=0.0)
    y[1, 2] = VOCAB
    with pytest.raises(ValueError, match=r"(?i)label"):
        corrected_target(t, y, tau=0.2)
