"""Vocab-parallel MFT over real gloo process groups: TP=2 and TP=4, one spawn per world size.

Rank r holds global vocab columns [r*Vl, (r+1)*Vl). For every case each rank checks, in its own process,
that its loss equals the TP=1 loss on the full logits and that its shard gradient equals the matching
slice of the TP=1 gradient; rank 0 then returns everything gathered so that the parent also checks it
against the float64 reference. Tolerances: mft_cases.TOL (TP=1 and TP differ only in fp32 summation
order and, for 16-bit gradients, at most one rounding step).
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from mft_cases import (F64, assert_grad_close, assert_loss_close, ignore_some, make_inputs, make_mask,
                       reference_mft, run_impl)

STAT_NAMES = ("teacher_accuracy", "mixing_weight", "student_ce", "weight_sum")


def _tie_across_shards(s, t, y, row, j, k, label):
    """Exact teacher tie between global columns j < k (on different shards); set the row's label."""
    t2, y2 = t.reshape(-1, t.shape[-1]), y.reshape(-1)
    top = t2[row].max() + 1
    t2[row, j] = top
    t2[row, k] = top
    y2[row] = label


def build_cases(world: int) -> list[dict]:
    vl = 8  # columns per rank
    width = vl * world
    cases = []

    # 1. fp32, [B, S, V], float weights + ignore_index, ties straddling shards, labels on every shard.
    s, t, y = make_inputs((3, 6), width, torch.float32, seed=50 + world)
    y = ignore_some(y, seed=50, frac=0.15)  # first, so that the crafted rows below stay valid
    lo, hi = vl - 1, vl  # last column of shard 0, first of shard 1
    _tie_across_shards(s, t, y, 0, lo, hi, lo)  # label = lower tied index -> teacher right
    _tie_across_shards(s, t, y, 1, lo, hi, hi)  # label = higher tied index -> teacher wrong (m = tau)
    _tie_across_shards(s, t, y, 2, 2, width - 1, width - 1)  # shard 0 vs last shard, label on the last
    _tie_across_shards(s, t, y, 3, 2, width - 1, vl + 3)  # tie elsewhere, label on shard 1
    y.view(-1)[4 : 4 + world] = torch.arange(world) * vl + 5  # one label owned by every shard
    cases.append(dict(name="fp32_ties_weights", s=s, t=t, y=y, loss_mask=make_mask((3, 6), "float", seed=50),
                      kw=dict(tau=0.25, temperature=1.0)))

    # 2. fp64, T=2, incorrect-only, padded last shard (vocab_size not a multiple of world), bool mask.
    vocab = width - 3
    s, t, y = make_inputs((20,), width, torch.float64, seed=60 + world, vocab_size=vocab)
    _tie_across_shards(s, t, y, 0, lo, hi, hi)
    _tie_across_shards(s, t, y, 1, lo, hi, lo)
    cases.append(dict(name="fp64_T2_incorrect_only_padded", s=s, t=t, y=y,
                      loss_mask=make_mask((20,), "bool", seed=60),
                      kw=dict(tau=0.6, temperature=2.0, correct_all=False, vocab_size=vocab)))

    # 3. bf16, reduction sum, whole last shard (and part of the one before) is padding, -inf padding.
    vocab = width - vl - 3
    s, t, y = make_inputs((2, 7), width, torch.bfloat16, seed=70 + world, vocab_size=vocab, pad_fill="-inf")
    y = ignore_some(y, seed=70)
    _tie_across_shards(s, t, y, 0, 1, vocab - 1, vocab - 1)  # label = higher tied index, on the last real shard
    cases.append(dict(name="bf16_sum_padding_only_shard", s=s, t=t, y=y, loss_mask=None,
                      kw=dict(tau=0.05, reduction="sum", vocab_size=vocab)))

    # 4. fp16, reduction none (per-token loss), large-value padding, T=2, tau=0.
    vocab = width - 1
    s, t, y = make_inputs((3, 5), width, torch.float16, seed=80 + world, vocab_size=vocab)
    cases.append(dict(name="fp16_none_T2_tau0", s=s, t=t, y=y, loss_mask=make_mask((3, 5), "float", seed=80),
                      kw=dict(tau=0.0, temperature=2.0, reduction="none", vocab_size=vocab)))

    # 5. fp32, tau=1 (pure CE), impl auto.
    s, t, y = make_inputs((16,), width, torch.float32, seed=90 + world)
    cases.append(dict(name="fp32_tau1_auto", s=s, t=t, y=y, loss_mask=None, kw=dict(tau=1.0, impl="auto")))

    # 6. All tokens ignored: loss 0, gradient exactly 0 on every shard.
    s, t, y = make_inputs((2, 4), width, torch.float32, seed=95 + world)
    cases.append(dict(name="all_ignored", s=s, t=t, y=torch.full_like(y, -100), loss_mask=None,
                      kw=dict(tau=0.25)))
    # 7. All tokens weighted 0 (mean reduction).
    cases.append(dict(name="all_zero_weight", s=s, t=t, y=make_inputs((2, 4), width, torch.float32,
                                                                         seed=96 + world)[2],
                      loss_mask=torch.zeros(2, 4), kw=dict(tau=0.25)))
    for case in cases:
        case["kw"].setdefault("impl", "torch")
    return cases


def _stats_dict(stats):
    return {name: getattr(stats, name).detach().to(F64) for name in STAT_NAMES}


def _tp_body(rank: int, world: int, cases: list[dict]):
    # A group with a short timeout: a rank that raises where another waits in a collective fails fast.
    group = dist.new_group(list(range(world)), timeout=timedelta(seconds=60))
    failures: list[str] = []
    results = []
    for case in cases:
        s, t, y, mask, kw = case["s"], case["t"], case["y"], case["loss_mask"], case["kw"]
        dtype = s.dtype
        width = s.shape[-1] // world
        cols = slice(rank * width, (rank + 1) * width)
        (full_loss, full_stats), full_grad = run_impl(s, t, y, loss_mask=mask, return_stats=True, **kw)
        try:
            (loss, stats), grad = run_impl(s[..., cols], t[..., cols], y, loss_mask=mask, return_stats=True,
                                           tp_group=group, **kw)
        except Exception as exc:  # noqa: BLE001 - reported with the case name
            failures.append(f"rank {rank} {case['name']}: raised {type(exc).__name__}: {exc}")
            raise
        name = f"rank {rank} {case['name']}"
        for label, check in (
            ("loss vs TP=1", lambda: assert_loss_close(loss, full_loss, dtype, name)),
            ("grad vs TP=1 slice", lambda: assert_grad_close(grad, full_grad[..., cols].to(F64), dtype, name)),
            ("loss dtype", lambda: _assert(loss.dtype == full_loss.dtype, f"{loss.dtype} vs {full_loss.dtype}")),
        ):
            try:
                check()
            except AssertionError as err:
                failures.append(f"{name}: {label}: {err}")
        for stat in STAT_NAMES:
            try:
                torch.testing.assert_close(getattr(stats, stat).to(F64), getattr(full_stats, stat).to(F64),
                                           rtol=1e-5, atol=1e-6)
            except AssertionError as err:
                failures.append(f"{name}: stat {stat} vs TP=1: {err}")
        # Every rank returns the same global loss (bitwise).
        losses = [torch.empty_like(loss.detach()) for _ in range(world)]
        dist.all_gather(losses, loss.detach().contiguous(), group=group)
        if not all(torch.equal(losses[0], other) for other in losses[1:]):
            failures.append(f"{name}: losses differ across ranks: {[x.tolist() for x in losses]}")
        grads = [torch.empty_like(grad) for _ in range(world)]
        dist.all_gather(grads, grad.contiguous(), group=group)
        results.append(dict(loss=loss.detach(), grad=torch.cat(grads, dim=-1), stats=_stats_dict(stats)))

    # vocab_size larger than V_local * tp is an error on every rank (raised before any collective).
    s, t, y = cases[0]["s"], cases[0]["t"], cases[0]["y"]
    width = s.shape[-1] // world
    cols = slice(rank * width, (rank + 1) * width)
    from nemo_mft import mft_loss

    try:
        mft_loss(s[..., cols], t[..., cols], y, vocab_size=width * world + 1, tp_group=group)
        failures.append(f"rank {rank}: vocab_size > V_local * tp did not raise")
    except ValueError as err:
        if "vocab" not in str(err).lower():
            failures.append(f"rank {rank}: vocab_size error message does not mention vocab: {err}")
    # vocab_size == V_local * tp is fine and equals no vocab_size.
    a = mft_loss(s[..., cols], t[..., cols], y, vocab_size=width * world, tp_group=group)
    b = mft_loss(s[..., cols], t[..., cols], y, tp_group=group)
    if not torch.equal(a, b):
        failures.append(f"rank {rank}: vocab_size == V_local * tp changed the loss: {a} vs {b}")

    gathered: list = [None] * world
    dist.all_gather_object(gathered, failures, group=group)
    return dict(failures=[f for per_rank in gathered for f in per_rank], results=results)


def _assert(cond, msg):
    assert cond, msg


def _check_world(world: int):
    from dist_utils import run_distributed

    cases = build_cases(world)
    out = run_distributed(_tp_body, world, cases)
    problems = list(out["failures"])
    for case, res in zip(cases, out["results"]):
        dtype = case["s"].dtype
        r = reference_mft(case["s"], case["t"], case["y"], loss_mask=case["loss_mask"],
                          **{k: v for k, v in case["kw"].items() if k != "impl"})
        name = f"TP={world} {case['name']} vs float64 reference"
        try:
            assert_loss_close(res["loss"], r.loss, dtype, name)
            assert_grad_close(res["grad"], r.grad, dtype, name)
            for stat in STAT_NAMES:
                tol = 1e-10 if dtype == F64 else 1e-5
                torch.testing.assert_close(res["stats"][stat], r.stats[stat], rtol=tol, atol=tol,
                                           msg=lambda m, stat=stat: f"{name}: stat {stat}\n{m}")
            if case["name"].startswith("all_"):
                assert (res["loss"] == 0).all() and (res["grad"] == 0).all(), f"{name}: not exactly zero"
        except AssertionError as err:
            problems.append(str(err))
    assert not problems, "\n\n".join(problems)


def test_tensor_parallel_2_ranks():
    _check_world(2)


def test_tensor_parallel_4_ranks():
    _check_world(4)


def test_tp_cases_are_meaningful():
    """The crafted rows really are what the TP cases claim (guards the generator, no processes)."""
    for world in (2, 4):
        cases = build_cases(world)
        c = cases[0]
        r = reference_mft(c["s"], c["t"], c["y"], loss_mask=c["loss_mask"], tau=0.25)
        a, y = r.argmax.reshape(-1), c["y"].reshape(-1)
        vl = c["s"].shape[-1] // world
        assert a[0] == vl - 1 and y[0] == vl - 1  # tie across shards 0/1, label lower: right
        assert a[1] == vl - 1 and y[1] == vl  # label higher: wrong
        assert a[2] == 2 and y[2] == c["s"].shape[-1] - 1
        owners = set((y[y >= 0] // vl).tolist())
        assert owners == set(range(world)), owners
        # Case 3: the last shard holds only padding.
        assert cases[2]["kw"]["vocab_size"] <= (world - 1) * vl
        assert r.weights.reshape(-1)[:4].gt(0).all()
