"""Correctness of the fused Triton MFT kernels: triton vs the torch path vs a float64 reference.

Device-agnostic cases, collected twice:
- on CPU under Triton's interpreter, by `test_kernels_interpreter.py`, which runs this file in a
  subprocess with TRITON_INTERPRET=1 (the variable must be set before the kernels are defined, and must
  not leak into the rest of the suite);
- on CUDA, compiled, by `test_kernels_gpu.py` (which imports these tests; skipped without a GPU).
Run directly without TRITON_INTERPRET=1 and without a GPU, every case skips.

Interpreter quirks the tolerances allow for: fp32 -> bf16 casts truncate instead of rounding (so a bf16
gradient may be 1 ulp off the torch path's correctly rounded one; the exact rounding check is GPU-only),
and out-of-bounds reads are not detected (masking is checked by construction: padding and row-strided
views hold NaN where nothing may be read).
"""

from __future__ import annotations

import pytest
import torch

triton_backend = pytest.importorskip("nemo_mft.kernels.triton_backend")

from nemo_mft import MFTLoss, mft_loss  # noqa: E402
from nemo_mft.kernels.triton_backend import TritonBackend  # noqa: E402
from nemo_mft.loss import formulas  # noqa: E402
from nemo_mft.loss.backends import ShardLayout, TorchBackend  # noqa: E402

if triton_backend.INTERPRETED:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    DEVICE = None
pytestmark = [
    pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU interpreter) or a CUDA GPU"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # numpy's inf - inf inside the interpreter
]

BF16_ULP = 2.0**-7  # relative spacing of bf16 (8 significant bits): bounds truncation and rounding


# ----------------------------------------------------------------------------------------------------
# Inputs and the float64 reference


def make_inputs(n, width, dtype, seed=0, vocab_size=None, device=None, ignore_frac=0.2, weights=False):
    """Student close to a peaked teacher (MFT's regime); some labels = teacher argmax (some confident),
    some ignored; padding columns hold NaN (they must never be read)."""
    device = device or DEVICE
    g = torch.Generator().manual_seed(seed)
    vocab = vocab_size or width
    teacher = torch.randn(n, width, generator=g) * 2.0
    peaked = torch.rand(n, generator=g) < 0.3
    teacher[peaked] *= 4.0
    student = teacher + 0.5 * torch.randn(n, width, generator=g)
    labels = torch.randint(0, vocab, (n,), generator=g)
    right = torch.rand(n, generator=g) < 0.4
    labels = torch.where(right, teacher[:, :vocab].argmax(-1), labels)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    mask = torch.rand(n, generator=g) * 2.0 if weights else None
    if vocab < width:
        teacher[:, vocab:] = float("nan")
        student[:, vocab:] = float("nan")
    to = dict(device=device)
    return (student.to(dtype).to(**to), teacher.to(dtype).to(**to), labels.to(**to),
            None if mask is None else mask.to(**to))


def reference(student, teacher, labels, *, tau, temperature=1.0, correct_all=True, ignore_index=-100,
              loss_mask=None, vocab_size=None, reduction="mean"):
    """Dense float64 MFT (docs/method.md, section 1): (loss, d loss / d student [N, width] with 0 on padding)."""
    n, width = student.shape
    vocab = vocab_size or width
    s = student.detach().cpu().double()[:, :vocab].clone().requires_grad_()
    t = teacher.detach().cpu().double()[:, :vocab]
    y = labels.cpu()
    valid = y != ignore_index
    w = torch.ones(n, dtype=torch.float64) if loss_mask is None else loss_mask.cpu().double()
    w = torch.where(valid, w, 0.0)
    y0 = torch.where(valid, y, 0)
    T = temperature
    p = torch.softmax(t / T, -1)
    a = t.argmax(-1)  # first index on ties
    pa, py = p.gather(1, a[:, None])[:, 0], p.gather(1, y0[:, None])[:, 0]
    correct = a == y0
    gap = pa - py
    m_wrong = (gap + tau) / (1 + gap)
    if correct_all:
        m_right = torch.where(py > 1 - tau, torch.ones_like(py), tau / (1 - py).clamp_min(1e-300))
    else:
        m_right = torch.zeros_like(py)
    m = torch.where(correct, m_right, m_wrong)
    q = (1 - m)[:, None] * p
    q[torch.arange(n), y0] += m
    log_r = torch.log_softmax(s / T, -1)
    kl = (torch.xlogy(q, q) - q * log_r).sum(-1) * T * T
    per_token = torch.where(valid, w * kl, 0.0)
    if reduction == "mean":
        total = w.sum()
        loss = per_token.sum() / (total if total > 0 else 1.0)
    elif reduction == "sum":
        loss = per_token.sum()
    else:
        loss = per_token
    (grad,) = torch.autograd.grad(loss.sum(), s)
    full = torch.zeros(n, width, dtype=torch.float64)
    full[:, :vocab] = grad
    return loss.detach(), full


def run_loss(student, teacher, labels, impl, **kwargs):
    """(loss, gradient) of mft_loss; the student is copied so that the caller's tensor is untouched."""
    s = student.detach().clone().requires_grad_()
    loss = mft_loss(s, teacher, labels, impl=impl, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    return loss.detach(), grad


def assert_grad_close(grad, ref, *, rounded):
    """grad (any dtype) vs a float64 reference; 16-bit gradients may be 1 ulp off (interpreter truncation)."""
    grad = grad.detach().cpu().double()
    ref = ref.detach().cpu().double()
    scale = max(ref.abs().max().item(), 1e-30)
    rtol = 1.01 * BF16_ULP if rounded else 1e-4
    torch.testing.assert_close(grad, ref, rtol=rtol, atol=1e-5 * scale)


def check_against_torch_and_reference(student, teacher, labels, **kwargs):
    loss_tr, grad_tr = run_loss(student, teacher, labels, "triton", **kwargs)
    loss_pt, grad_pt = run_loss(student, teacher, labels, "torch", **kwargs)
    loss_ref, grad_ref = reference(student, teacher, labels, **kwargs)
    assert loss_tr.dtype == loss_pt.dtype and grad_tr.dtype == grad_pt.dtype and grad_tr.shape == student.shape
    torch.testing.assert_close(loss_tr, loss_pt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_tr.cpu().double(), loss_ref, rtol=2e-4, atol=1e-5)
    rounded = grad_tr.dtype in (torch.bfloat16, torch.float16)
    assert_grad_close(grad_tr, grad_pt.double(), rounded=rounded)
    assert_grad_close(grad_tr, grad_ref, rounded=rounded)
    assert torch.isfinite(grad_tr).all()
    vocab = kwargs.get("vocab_size") or student.shape[-1]
    assert (grad_tr[:, vocab:] == 0).all()
    ignored = labels == kwargs.get("ignore_index", -100)
    assert (grad_tr[ignored] == 0).all()


@pytest.fixture
def small_blocks(monkeypatch):
    """Several blocks per row with ragged tails even for small vocabularies."""
    monkeypatch.setattr(triton_backend, "STATS_BLOCK", 256)
    monkeypatch.setattr(triton_backend, "GRAD_BLOCK", 128)


# ----------------------------------------------------------------------------------------------------
# Loss and gradient, single device

CASES = {
    # name: (n, width, kwargs for make_inputs, kwargs for the loss)
    "mean-T1": (32, 3001, {}, dict(tau=0.25)),
    "sum-T2-weights-incorrect-only": (17, 1037, dict(weights=True), dict(tau=0.2, temperature=2.0,
                                                                          correct_all=False, reduction="sum")),
    "none-padded-T0.7": (9, 515, dict(vocab_size=500), dict(tau=0.3, temperature=0.7, vocab_size=500,
                                                            reduction="none")),
    "tiny-vocab-ignore-index": (5, 7, dict(ignore_frac=0.5), dict(tau=0.25, ignore_index=-100)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient(case, dtype, small_blocks):
    n, width, input_kwargs, loss_kwargs = CASES[case]
    student, teacher, labels, mask = make_inputs(n, width, dtype, seed=len(case), **input_kwargs)
    check_against_torch_and_reference(student, teacher, labels, loss_mask=mask, **loss_kwargs)


def test_default_blocks_and_mixed_dtypes():
    """Default launch configuration (one block for V < 4096), fp16 student with a bf16 teacher."""
    student, teacher, labels, _ = make_inputs(6, 1500, torch.float32, seed=3)
    check_against_torch_and_reference(student.half(), teacher.bfloat16(), labels, tau=0.25, temperature=1.5)


def test_statistics_match_torch_backend(small_blocks):
    """Pass 1 column by column, with -inf logits (masked vocab) and argmax ties across blocks."""
    n, width = 8, 700
    student, teacher, _, _ = make_inputs(n, width, torch.float32, seed=5)
    teacher[0, :] = 0.0  # all tied: argmax 0
    teacher[1, 10] = teacher[1, 300] = teacher[1, 650] = 50.0  # tie over three blocks: 10
    teacher[2, 500] = teacher[2, 600] = 50.0  # tie within the last blocks: 500
    teacher[3, :256] = float("-inf")  # first block without teacher mass
    student[3, :256] = float("-inf")
    teacher[4, 100:400] = float("-inf")  # student finite where the teacher has no mass
    local_labels = torch.tensor([0, 10, 600, 299, 150, -1, 699, 5], device=DEVICE)
    for temperature in (1.0, 1.7):
        layout = ShardLayout(offset=0, real_width=690)
        got, got_arg = TritonBackend(fallback=TorchBackend()).statistics(student, teacher, local_labels, layout, temperature, torch.float32)
        exp, exp_arg = TorchBackend().statistics(student, teacher, local_labels, layout, temperature, torch.float32)
        assert got_arg.tolist() == exp_arg.tolist()
        assert got_arg[:3].tolist() == [0, 10, 500]
        torch.testing.assert_close(got, exp, rtol=2e-6, atol=1e-6)


def test_shard_of_padding_only():
    """A shard with no real column (real_width 0) gives the empty statistics and a zero gradient."""
    student, teacher, labels, _ = make_inputs(4, 64, torch.bfloat16, seed=6)
    layout = ShardLayout(offset=64, real_width=0)
    local = torch.full((4,), -1, device=DEVICE)
    got, got_arg = TritonBackend(fallback=TorchBackend()).statistics(student, teacher, local, layout, 1.0, torch.float32)
    exp, exp_arg = TorchBackend().statistics(student, teacher, local, layout, 1.0, torch.float32)
    torch.testing.assert_close(got, exp)
    assert got_arg.tolist() == exp_arg.tolist() == [0, 0, 0, 0]


def test_argmax_ties_decide_the_target(small_blocks):
    """bf16 teacher with its maximum repeated in two blocks: the first one is the argmax (torch rule),
    so a label at the second occurrence is 'teacher wrong' on both paths."""
    n, width = 6, 600
    student, teacher, labels, _ = make_inputs(n, width, torch.bfloat16, seed=7, ignore_frac=0.0)
    teacher[:, 50] = teacher[:, 450] = 30.0
    labels[:3] = 450  # tie, second occurrence: wrong
    labels[3:] = 50  # first occurrence: right
    for impl in ("triton", "torch"):
        _, stats = mft_loss(student, teacher, labels, tau=0.25, impl=impl, return_stats=True)
        assert stats.teacher_correct_sum.item() == 3.0
    check_against_torch_and_reference(student, teacher, labels, tau=0.25)


def test_strided_inputs_are_not_read_out_of_bounds(small_blocks):
    """Row-strided student view (NaN in the gaps) and a column-strided teacher (copied)."""
    n, width = 7, 333
    student, teacher, labels, _ = make_inputs(n, width, torch.float32, seed=8)
    big = torch.full((n, width + 45), float("nan"), device=DEVICE)
    big[:, :width] = student
    teacher_t = teacher.t().contiguous().t()  # column stride n
    check_against_torch_and_reference(big[:, :width], teacher_t, labels, tau=0.25)


def test_rows_without_weight_may_hold_nonfinite_logits():
    """Ignored / zero-weight rows: NaN and inf logits are never read, their gradient is exactly 0."""
    n, width = 6, 300
    student, teacher, labels, _ = make_inputs(n, width, torch.bfloat16, seed=9, ignore_frac=0.0)
    mask = torch.ones(n, device=DEVICE)
    labels[0] = -100
    student[0, 3] = float("nan")
    teacher[0, 5] = float("inf")
    mask[1] = 0.0
    student[1, :] = float("inf")
    teacher[1, :] = float("nan")
    for reduction in ("mean", "none"):
        loss_tr, grad_tr = run_loss(student, teacher, labels, "triton", tau=0.25, loss_mask=mask, reduction=reduction)
        loss_pt, grad_pt = run_loss(student, teacher, labels, "torch", tau=0.25, loss_mask=mask, reduction=reduction)
        assert torch.isfinite(loss_tr).all()
        assert (grad_tr[:2] == 0).all() and not torch.signbit(grad_tr[:2]).any()
        torch.testing.assert_close(loss_tr, loss_pt, rtol=1e-5, atol=1e-6)
        assert_grad_close(grad_tr, grad_pt.double(), rounded=grad_tr.dtype == torch.bfloat16)


@pytest.mark.parametrize("bad", ["nan-student", "inf-teacher", "all-neg-inf-teacher"])
def test_nonfinite_valid_rows_raise_like_torch(bad):
    student, teacher, labels, _ = make_inputs(4, 200, torch.float32, seed=10, ignore_frac=0.0)
    if bad == "nan-student":
        student[2, 17] = float("nan")
    elif bad == "inf-teacher":
        teacher[2, 17] = float("inf")
    else:
        teacher[2, :] = float("-inf")
    messages = []
    for impl in ("torch", "triton"):
        with pytest.raises(ValueError, match="non-finite logits") as err:
            mft_loss(student, teacher, labels, tau=0.25, impl=impl)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_empty_and_all_ignored():
    student, teacher, labels, _ = make_inputs(3, 50, torch.bfloat16, seed=11)
    for n_rows in (0, 3):
        s, t = student[:n_rows], teacher[:n_rows]
        y = torch.full((n_rows,), -100, device=DEVICE)
        loss, grad = run_loss(s, t, y, "triton", tau=0.25)
        assert loss.item() == 0.0 and grad.shape == s.shape and (grad == 0).all()


# ----------------------------------------------------------------------------------------------------
# Gradient in place


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_inplace_gradient_overwrites_logits_and_matches(dtype, small_blocks):
    n, width = 12, 515
    student, teacher, labels, _ = make_inputs(n, width, dtype, seed=12, vocab_size=500)
    kwargs = dict(tau=0.25, temperature=1.3, vocab_size=500)
    ref_loss, ref_grad = run_loss(student, teacher, labels, "triton", **kwargs)

    # Out of place (default): the logits are untouched.
    logits = student.clone().requires_grad_()
    before = logits.detach().clone()
    loss = mft_loss(logits, teacher, labels, impl="triton", **kwargs)
    loss.backward()
    assert torch.equal(logits.detach().nan_to_num(), before.nan_to_num())
    assert torch.equal(logits.grad, ref_grad)

    # In place: the forward call leaves the gradient in the logits' buffer; backward hands it on.
    leaf = student.clone().requires_grad_()
    logits = leaf.view(3, 4, width)  # a view: the flattening inside the loss stays a view
    loss = mft_loss(logits, teacher.view(3, 4, width), labels.view(3, 4), impl="triton", inplace_grad=True, **kwargs)
    assert torch.equal(loss.detach(), ref_loss)
    assert torch.equal(leaf.detach(), ref_grad)  # already overwritten by forward
    loss.backward()
    assert torch.equal(leaf.grad, ref_grad)

    # An incoming gradient other than 1: one scaling pass (same as out of place).
    leaf = student.clone().requires_grad_()
    (mft_loss(leaf, teacher, labels, impl="triton", inplace_grad=True, **kwargs) * 3.0).backward()
    torch.testing.assert_close(leaf.grad, (ref_grad.double() * 3.0).to(dtype), rtol=0, atol=0)


def test_inplace_gradient_flows_through_a_linear_head():
    """The usual case: logits = h @ W, whose backward does not need the logits."""
    g = torch.Generator().manual_seed(13)
    h = torch.randn(10, 32, generator=g).to(DEVICE)
    w0 = (torch.randn(32, 301, generator=g) * 0.3).to(DEVICE)
    teacher = h @ w0
    labels = torch.randint(0, 301, (10,), generator=g).to(DEVICE)
    grads = []
    for inplace in (False, True):
        w = w0.clone().requires_grad_()
        criterion = MFTLoss(tau=0.25, impl="triton", inplace_grad=inplace)
        criterion(h @ w, teacher, labels).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_inplace_gradient_detects_saved_logits():
    """If another node saved the logits for its backward (tanh saves its output), autograd raises
    instead of treating the gradient as logits: the kernels' raw write bumps the version counter."""
    x = torch.randn(4, 100, device=DEVICE, requires_grad=True)
    teacher = torch.randn(4, 100, device=DEVICE)
    labels = torch.randint(0, 100, (4,), device=DEVICE)
    loss = mft_loss(torch.tanh(x), teacher, labels, tau=0.25, impl="triton", inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    mft_loss(torch.tanh(x), teacher, labels, tau=0.25, impl="triton").backward()  # out of place: fine


def test_inplace_per_token_loss_and_fallback():
    """reduction 'none' with bf16 logits writes in place too (per-token incoming gradients are applied in
    backward, in fp32). A teacher sharing the student's storage is still read by pass 2: that falls back
    to a new buffer and leaves the logits as they were."""
    student, teacher, labels, _ = make_inputs(5, 130, torch.bfloat16, seed=14, ignore_frac=0.0)
    _, expected = run_loss(student, teacher, labels, "triton", tau=0.25, reduction="none")
    leaf = student.clone().requires_grad_()
    loss = mft_loss(leaf, teacher, labels, tau=0.25, impl="triton", reduction="none", inplace_grad=True)
    assert torch.equal(leaf.detach(), expected)
    per_token = torch.linspace(0.5, 2.0, 5, device=DEVICE)
    loss.backward(per_token)
    assert leaf.grad.data_ptr() == leaf.data_ptr()
    assert torch.equal(leaf.grad, (expected.float() * per_token[:, None]).to(torch.bfloat16))

    both = torch.cat([student, teacher], dim=-1).requires_grad_()
    before = both.detach().clone()
    s, t = both[:, :130], both.detach()[:, 130:]
    mft_loss(s, t, labels, tau=0.25, impl="triton", inplace_grad=True).backward()
    assert torch.equal(both.detach(), before)


# ----------------------------------------------------------------------------------------------------
# Tensor parallelism


def test_vocab_shards_without_collective(small_blocks):
    """Backend-level TP: per-shard kernels on column slices (row stride > width), stacked statistics,
    the shared combine, per-shard gradients = slices of the single-device gradient."""
    n, width, vocab, ranks = 9, 400, 1130, 3  # last shard: 330 real columns + 70 padding
    student, teacher, labels, mask = make_inputs(n, width * ranks, torch.bfloat16, seed=15, vocab_size=vocab,
                                                 weights=True)
    tau, temperature = 0.25, 1.4
    weights = torch.where(labels == -100, 0.0, mask)
    coef = weights / weights.sum()
    for backend in (TritonBackend(fallback=TorchBackend()), TorchBackend()):
        stats, argmaxes, layouts, locals_ = [], [], [], []
        for r in range(ranks):
            layout = ShardLayout(offset=r * width, real_width=max(0, min(width, vocab - r * width)))
            local = torch.where(weights > 0, labels - layout.offset, -1)
            cols = slice(r * width, (r + 1) * width)
            st, am = backend.statistics(student[:, cols], teacher[:, cols], local, layout, temperature, torch.float32)
            stats.append(st), argmaxes.append(am + layout.offset), layouts.append(layout), locals_.append(local)
        targets = formulas.combine_statistics(torch.stack(stats), torch.stack(argmaxes), labels, temperature, tau, True)
        grad = torch.cat([
            backend.gradient(student[:, r * width:(r + 1) * width], teacher[:, r * width:(r + 1) * width], locals_[r],
                             layouts[r], targets, coef, temperature, torch.bfloat16)
            for r in range(ranks)
        ], dim=-1)
        ref_loss, ref_grad = reference(student, teacher, labels, tau=tau, temperature=temperature,
                                       loss_mask=mask, vocab_size=vocab)
        loss = (torch.where(weights > 0, targets.loss, 0.0) * coef).sum()
        torch.testing.assert_close(loss.cpu().double(), ref_loss, rtol=2e-4, atol=1e-5)
        assert_grad_close(grad, ref_grad, rounded=True)


def _tp2_body(rank, world_size, cases):
    """Runs on each gloo rank: this rank's shard through mft_loss(impl="triton"), in place and not."""
    import torch.distributed as dist

    results = []
    for student, teacher, labels, mask, kwargs in cases:
        width = student.shape[-1] // world_size
        cols = slice(rank * width, (rank + 1) * width)
        out = []
        for inplace in (False, True):
            shard = student[:, cols].clone().requires_grad_()
            loss = mft_loss(shard, teacher[:, cols], labels, loss_mask=mask, tp_group=dist.group.WORLD,
                            impl="triton", inplace_grad=inplace, **kwargs)
            loss.backward()
            grads = [torch.empty_like(shard.grad) for _ in range(world_size)]
            dist.all_gather(grads, shard.grad.contiguous())
            out.append((loss.detach(), torch.cat(grads, dim=-1)))
        results.append(out)
    return results


def test_tensor_parallel_two_ranks_over_gloo():
    if DEVICE != "cpu":
        pytest.skip("gloo on CPU tensors; multi-GPU TP is covered by the Megatron tests")
    from dist_utils import run_distributed

    cases = []
    # Padded vocab (rank 1 holds padding), bf16, weights, temperature.
    s, t, y, m = make_inputs(11, 2 * 260, torch.bfloat16, seed=16, vocab_size=509, weights=True)
    t[:, 3] = t[:, 300] = 40.0  # argmax tie across ranks: rank 0's column wins
    y[:4] = 300
    cases.append((s, t, y, m, dict(tau=0.25, temperature=1.5, vocab_size=509)))
    # Rank 1 is padding only, fp32, reduction sum.
    s, t, y, m = make_inputs(6, 2 * 150, torch.float32, seed=17, vocab_size=140)
    cases.append((s, t, y, m, dict(tau=0.2, vocab_size=140, reduction="sum")))

    results = run_distributed(_tp2_body, 2, cases)
    for (student, teacher, labels, mask, kwargs), out in zip(cases, results):
        ref_loss, ref_grad = reference(student, teacher, labels, loss_mask=mask, **kwargs)
        single_loss, single_grad = run_loss(student, teacher, labels, "triton", loss_mask=mask, **kwargs)
        for loss, grad in out:
            torch.testing.assert_close(loss, single_loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-4, atol=1e-5)
            assert_grad_close(grad, ref_grad, rounded=grad.dtype == torch.bfloat16)
            assert_grad_close(grad, single_grad.double(), rounded=grad.dtype == torch.bfloat16)
        assert torch.equal(out[0][1], out[1][1])  # in place == out of place


def test_float64_goes_through_the_torch_path():
    student, teacher, labels, _ = make_inputs(4, 90, torch.float64, seed=18)
    loss_tr, grad_tr = run_loss(student, teacher, labels, "triton", tau=0.25)
    loss_pt, grad_pt = run_loss(student, teacher, labels, "torch", tau=0.25)
    assert loss_tr.dtype == grad_tr.dtype == torch.float64
    assert torch.equal(loss_tr, loss_pt) and torch.equal(grad_tr, grad_pt)
