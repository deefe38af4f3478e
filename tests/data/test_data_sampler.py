"""Data order: determinism, DP sharding, exact resume, multiple epochs, evaluation shards."""

from itertools import islice

import pytest
import torch

from nemo_mft.data.batching import collate, eval_micro_batches, train_micro_batches
from nemo_mft.data.sampler import MicroBatchSampler, num_microbatches
from nemo_mft.data.samples import TokenizedDataset

N, S = 13, 4


def make_dataset(n=N):
    """Sample i has every token equal to i, so batches reveal their indices."""
    tokens = torch.arange(n).unsqueeze(1).repeat(1, S)
    return TokenizedDataset(tokens, tokens + 1, torch.ones(n, S))


def take(sampler, consumed, steps):
    return list(islice(sampler.indices(consumed), steps))


def global_batches(num, *, mbs, dp, gbs, seed=0, consumed=0, n=N):
    """Global batch j as the list of dataset indices gathered from all ranks' micro-batches."""
    nmb = num_microbatches(gbs, mbs, dp)
    per_rank = [take(MicroBatchSampler(n, mbs, r, dp, seed), consumed, num * nmb) for r in range(dp)]
    out = []
    for j in range(num):
        batch = []
        for m in range(j * nmb, (j + 1) * nmb):
            for r in range(dp):
                batch += per_rank[r][m]
        out.append(batch)
    return out


def test_num_microbatches():
    assert num_microbatches(16, 2, 4) == 2
    with pytest.raises(ValueError, match="not a multiple"):
        num_microbatches(12, 2, 4)


def test_determinism_by_seed():
    assert take(MicroBatchSampler(N, 3, 0, 1, seed=5), 0, 10) == take(MicroBatchSampler(N, 3, 0, 1, seed=5), 0, 10)
    assert take(MicroBatchSampler(N, 3, 0, 1, seed=5), 0, 10) != take(MicroBatchSampler(N, 3, 0, 1, seed=6), 0, 10)
    assert take(MicroBatchSampler(N, 1, 0, 1, seed=5, shuffle=False), 0, 3) == [[0], [1], [2]]


def test_epochs_are_permutations_and_reshuffled():
    sampler = MicroBatchSampler(N, 1, 0, 1, seed=0)
    flat = [i for mb in take(sampler, 0, 3 * N) for i in mb]
    epochs = [flat[e * N:(e + 1) * N] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(N))
    assert epochs[0] != epochs[1] != epochs[2]
    # a micro-batch can straddle an epoch boundary: mbs=5 over N=13
    flat5 = [i for mb in take(MicroBatchSampler(N, 5, 0, 1, seed=0), 0, 6) for i in mb]
    assert flat5[:3 * N - 9] == flat[:3 * N - 9]


def test_dp_shards_are_disjoint_and_cover_each_global_batch():
    mbs, dp, gbs = 2, 3, 12
    reference = global_batches(6, mbs=1, dp=1, gbs=gbs)  # the single-rank stream, cut into global batches
    sharded = global_batches(6, mbs=mbs, dp=dp, gbs=gbs)
    assert sharded == reference  # same global batches whatever the split
    nmb = num_microbatches(gbs, mbs, dp)
    per_rank = [take(MicroBatchSampler(N, mbs, r, dp, 0), 0, nmb) for r in range(dp)]
    positions = [set() for _ in range(dp)]
    stream = MicroBatchSampler(N, mbs, 0, dp, 0).stream(0, gbs)
    for r in range(dp):  # ranks own disjoint stream positions of the first global batch
        for m, mb in enumerate(per_rank[r]):
            start = m * mbs * dp + r * mbs
            assert mb == stream[start:start + mbs]
            positions[r] |= set(range(start, start + mbs))
    assert set().union(*positions) == set(range(gbs))
    assert sum(len(p) for p in positions) == gbs


@pytest.mark.parametrize("dp", [1, 2])
def test_exact_resume(dp):
    ds, mbs, gbs = make_dataset(), 2, 8
    nmb = num_microbatches(gbs, mbs, dp)
    for rank in range(dp):
        sampler = MicroBatchSampler(N, mbs, rank, dp, seed=11)
        uninterrupted = list(islice(train_micro_batches(ds, sampler, 0), 7 * nmb))
        for iteration in (1, 2, 5):  # resume after `iteration` global batches (spans epochs: 5*8 > 3*13)
            consumed = iteration * gbs
            fresh = MicroBatchSampler(N, mbs, rank, dp, seed=11)
            resumed = list(islice(train_micro_batches(ds, fresh, consumed), (7 - iteration) * nmb))
            expected = uninterrupted[iteration * nmb:]
            assert len(resumed) == len(expected)
            for got, want in zip(resumed, expected):
                assert all(torch.equal(got[k], want[k]) for k in want)


def test_micro_batch_tensors():
    ds = make_dataset()
    batch = next(train_micro_batches(ds, MicroBatchSampler(N, 3, 0, 1, seed=0, shuffle=False), 0))
    assert batch["tokens"].shape == (3, S) and batch["tokens"][:, 0].tolist() == [0, 1, 2]
    assert {k: v.dtype for k, v in batch.items()} == {
        "tokens": torch.int64, "labels": torch.int64, "loss_mask": torch.float32, "position_ids": torch.int64}
    assert batch["position_ids"].tolist() == [list(range(S))] * 3
    assert collate([ds[4]])["labels"].tolist() == [[5] * S]


def test_resume_and_layout_errors():
    sampler = MicroBatchSampler(N, 2, 0, 2, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        next(sampler.indices(3))
    with pytest.raises(ValueError, match="dp_rank"):
        MicroBatchSampler(N, 2, 2, 2, seed=0)
    with pytest.raises(ValueError, match="sampler is for"):
        next(train_micro_batches(make_dataset(5), sampler, 0))


def test_eval_shards_cover_once_with_equal_counts():
    ds, mbs, dp = make_dataset(), 2, 3
    shards = [eval_micro_batches(ds, mbs, r, dp) for r in range(dp)]
    assert [len(s) for s in shards] == [3, 3, 3]  # ceil(13 / 6)
    seen = []
    for shard in shards:
        for batch in shard:
            assert batch["tokens"].shape == (mbs, S)
            real = batch["loss_mask"].sum(dim=1) > 0
            seen += batch["tokens"][real, 0].tolist()
    assert sorted(seen) == list(range(N))
    total = sum(b["loss_mask"].sum().item() for s in shards for b in s)
    assert total == ds.num_loss_tokens
