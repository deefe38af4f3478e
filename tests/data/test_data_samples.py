"""Sample layout: loss-mask boundaries on hand-made examples, truncation, max_samples, eval windows."""

import json

import pytest
import torch

from nemo_mft.data.samples import build_sft_dataset, concat_datasets, pack_sample, scored_answer_tokens
from nemo_mft.data.shuffle import select_subset, subset_order
from nemo_mft.data.tokenizers import ByteTokenizer
from nemo_mft.data.windows import build_text_eval_dataset

TOK = ByteTokenizer()
PAD, BOS, EOS = TOK.pad_id, TOK.bos_id, TOK.eos_id
a, b, c, d, x, y = (ord(ch) for ch in "abcdxy")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def as_lists(sample):
    return [t.tolist() for t in sample[:3]] + [sample[3]]


def test_prompt_answer_boundary_after_shift():
    # full = [BOS a b | c d EOS]; the position whose input is the last prompt token 'b' predicts 'c'.
    got = as_lists(pack_sample([a, b], [c, d], seq_length=8, pad_id=PAD, eos_id=EOS, bos_id=BOS))
    assert got == [
        [BOS, a, b, c, d, PAD, PAD, PAD],
        [a, b, c, d, EOS, PAD, PAD, PAD],
        [0, 0, 1, 1, 1, 0, 0, 0],
        False,
    ]


def test_truncation_keeps_prompt_start():
    got = as_lists(pack_sample([a, b], [c, d], seq_length=4, pad_id=PAD, eos_id=EOS, bos_id=BOS))
    assert got == [[BOS, a, b, c], [a, b, c, d], [0, 0, 1, 1], True]
    # exactly S + 1 tokens fits without truncation
    assert pack_sample([a, b], [c], seq_length=4, pad_id=PAD, eos_id=EOS, bos_id=BOS)[3] is False
    # a prompt that fills the window leaves no loss
    _, _, mask, truncated = pack_sample([a] * 6, [c], seq_length=4, pad_id=PAD, eos_id=EOS, bos_id=BOS)
    assert truncated and mask.sum() == 0


def test_text_format_loss_on_all_tokens():
    with_bos = as_lists(pack_sample([], [x, y], seq_length=4, pad_id=PAD, eos_id=EOS, bos_id=BOS))
    assert with_bos == [[BOS, x, y, PAD], [x, y, EOS, PAD], [1, 1, 1, 0], False]
    no_bos = as_lists(pack_sample([], [x, y], seq_length=4, pad_id=PAD, eos_id=EOS, bos_id=None))
    assert no_bos == [[x, y, PAD, PAD], [y, EOS, PAD, PAD], [1, 1, 0, 0], False]


def test_build_sft_dataset_each_format(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"input": "ab", "output": "cd"}, {"prompt": "ab", "completion": "cd"}, {"text": "xy"}])
    ds = build_sft_dataset(path, TOK, 6)
    assert len(ds) == 3 and ds.seq_length == 6 and ds.source_lines == [1, 2, 3]
    assert ds.loss_mask.dtype == torch.float32 and ds.tokens.dtype == torch.int64
    assert ds.loss_mask.tolist() == [[0, 0, 1, 1, 1, 0]] * 2 + [[1, 1, 1, 0, 0, 0]]
    item = ds[0]
    assert set(item) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert item["position_ids"].tolist() == list(range(6))
    assert ds.num_truncated == 0 and ds.num_loss_tokens == 9


def test_overflow_policy(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "ab"}, {"input": "a" * 20, "output": "b"}, {"text": "c" * 9}])
    ds = build_sft_dataset(path, TOK, 8)
    assert ds.num_truncated == 2 and ds.num_without_loss == 1 and ds.num_dropped == 0
    (acc,) = ds.accounting
    assert (acc.rows_read, acc.rows_kept, acc.first_truncated, acc.first_without_loss) == (3, 3, 2, 2)
    with pytest.raises(ValueError, match=r"t\.jsonl:2: 2 of 3 rows are longer than seq_length \+ 1 = 9 tokens"):
        build_sft_dataset(path, TOK, 8, on_overflow="error")
    with pytest.raises(ValueError, match="on_overflow"):
        build_sft_dataset(path, TOK, 8, on_overflow="cut")


def test_drop_leaves_out_the_rows_that_would_be_cut(tmp_path):
    rows = [{"text": "ab"}, {"input": "a" * 20, "output": "b"}, {"text": "xy"}, {"text": "c" * 9}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    kept = build_sft_dataset(path, TOK, 8, on_overflow="drop")
    assert kept.source_lines == [1, 3] and kept.num_truncated == 0 and kept.num_without_loss == 0
    (acc,) = kept.accounting
    assert (acc.rows_read, acc.rows_kept, acc.dropped, acc.first_dropped) == (4, 2, 2, 2)
    assert torch.equal(kept.tokens, build_sft_dataset(path, TOK, 8).tokens[[0, 2]])
    # Nothing to drop: the same samples as truncate, and error does not fire.
    fits = write_jsonl(tmp_path / "fits.jsonl", [{"text": "ab"}, {"input": "a", "output": "b"}])
    for policy in ("drop", "error"):
        assert torch.equal(build_sft_dataset(fits, TOK, 8, on_overflow=policy).tokens,
                           build_sft_dataset(fits, TOK, 8).tokens)


def test_drop_fills_the_budget_from_the_seeded_order(tmp_path):
    rows = [{"text": "x" * (20 if i % 3 == 0 else 2)} for i in range(30)]  # rows 1, 4, 7, ... are too long
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    truncating = build_sft_dataset(path, TOK, 8, max_samples=10, seed=5)
    dropping = build_sft_dataset(path, TOK, 8, max_samples=10, seed=5, on_overflow="drop")
    assert len(dropping) == 10 and all(line % 3 != 1 for line in dropping.source_lines)
    assert dropping.source_lines == sorted(dropping.source_lines)
    # The rows the budget took anyway stay; the long ones are replaced by the next rows of the seeded order.
    short = {line for line in truncating.source_lines if line % 3 != 1}
    assert short <= set(dropping.source_lines)
    # Exactly: walk the seeded order, skipping long rows, until 10 are kept.
    kept, dropped = [], []
    for index in subset_order(30, 10, seed=5):
        if len(kept) == 10:
            break
        (dropped if index % 3 == 0 else kept).append(index + 1)
    (acc,) = dropping.accounting
    assert dropping.source_lines == sorted(kept) and acc.rows_kept == 10
    assert acc.dropped == len(dropped) >= truncating.num_truncated > 0 and acc.first_dropped == min(dropped)
    # Fewer usable rows than the budget: all of them, and every long row is counted as dropped.
    few = build_sft_dataset(path, TOK, 8, max_samples=25, on_overflow="drop")
    assert len(few) == 20 and few.num_dropped == 10


@pytest.mark.parametrize("prompt, answer, scored", [
    ("ab", "cd", 2),            # fits: both answer tokens
    ("ab", "", 0),              # empty answer: only the eos gets loss
    ("a" * 8, "cd", 0),         # bos + prompt fill the window of S + 1 = 9 tokens
    ("a" * 7, "cd", 1),         # one answer token left as a label
    ("", "xy", 2),              # text row with bos
])
def test_scored_answer_tokens_matches_the_layout(prompt, answer, scored):
    head, body = [BOS] + TOK.encode(prompt), TOK.encode(answer)
    assert scored_answer_tokens(len(head), len(body), 8) == scored
    tokens, labels, mask, _ = pack_sample(head[1:], body, seq_length=8, pad_id=PAD, eos_id=EOS, bos_id=BOS)
    answer_positions = [i for i in range(8) if mask[i] and len(head) <= i + 1 < len(head) + len(body)]
    assert len(answer_positions) == scored


def test_without_loss_counts_rows_with_no_answer_token_scored(tmp_path):
    rows = [{"input": "q", "output": "a"}, {"input": "q", "output": ""}, {"text": ""},
            {"input": "p" * 30, "output": "a"}, {"text": "fine"}]
    ds = build_sft_dataset(write_jsonl(tmp_path / "t.jsonl", rows), TOK, 8)
    (acc,) = ds.accounting
    assert (acc.without_loss, acc.first_without_loss, acc.truncated, acc.first_truncated) == (3, 2, 1, 4)
    assert acc.loss_tokens == ds.num_loss_tokens == 2 + 1 + 1 + 0 + 5  # empty answers still score their eos
    assert acc.without_loss_share == pytest.approx(3 / 5)


def test_add_bos_needs_a_bos(tmp_path):
    class NoBos(ByteTokenizer):
        bos_id = None
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "ab"}])
    with pytest.raises(ValueError, match="no bos token"):
        build_sft_dataset(path, NoBos(), 8)
    assert build_sft_dataset(path, NoBos(), 8, add_bos=False).tokens[0, 0].item() == a


def test_max_samples_subset(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(50)])
    full = build_sft_dataset(path, TOK, 16)
    assert full.source_lines == list(range(1, 51))
    small = build_sft_dataset(path, TOK, 16, max_samples=10, seed=3)
    again = build_sft_dataset(path, TOK, 16, max_samples=10, seed=3)
    other = build_sft_dataset(path, TOK, 16, max_samples=10, seed=4)
    larger = build_sft_dataset(path, TOK, 16, max_samples=20, seed=3)
    assert len(small) == 10 and small.source_lines == sorted(small.source_lines)
    assert small.source_lines == again.source_lines and torch.equal(small.tokens, again.tokens)
    assert small.source_lines != other.source_lines
    assert small.source_lines != list(range(1, 11))  # a random subset, not the head of the file
    assert set(small.source_lines) <= set(larger.source_lines)  # nested budgets
    for i, line in enumerate(small.source_lines):  # each kept sample is its source row
        assert torch.equal(small.tokens[i], full.tokens[line - 1])
    assert len(build_sft_dataset(path, TOK, 16, max_samples=500)) == 50
    with pytest.raises(ValueError, match="max_samples"):
        build_sft_dataset(path, TOK, 16, max_samples=0)


def test_subset_order_starts_with_the_subset():
    order = subset_order(50, 10, seed=3)
    assert sorted(order) == list(range(50)) and sorted(order[:10]) == select_subset(50, 10, seed=3)
    assert subset_order(5, None, seed=3) == subset_order(5, 5, seed=3) == list(range(5))


def test_eval_windows_cover_stream(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"text": "abcd"}, {"text": "xy"}])
    ds = build_text_eval_dataset(path, TOK, 3)
    stream = [a, b, c, d, EOS, x, y, EOS]  # 8 tokens -> 7 labels -> windows of 3, 3, 1
    assert ds.tokens.tolist() == [[a, b, c], [d, EOS, x], [y, PAD, PAD]]
    assert ds.labels.tolist() == [[b, c, d], [EOS, x, y], [EOS, PAD, PAD]]
    assert ds.loss_mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert ds.num_loss_tokens == len(stream) - 1
    assert ds.labels[ds.loss_mask.bool()].tolist() == stream[1:]


def test_eval_window_caps_and_format(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"text": "a" * 100}] * 5)
    assert len(build_text_eval_dataset(path, TOK, 10, max_windows=4)) == 4
    capped = build_text_eval_dataset(path, TOK, 10, max_tokens=25)
    assert capped.num_loss_tokens == 25 and len(capped) == 3
    both = build_text_eval_dataset(path, TOK, 10, max_windows=2, max_tokens=25)
    assert len(both) == 2 and both.num_loss_tokens == 20
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a"}, {"input": "q", "output": "r"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*needs \{\"text\"\} rows"):
        build_text_eval_dataset(bad, TOK, 10)


def test_concat_keeps_samples_in_order_and_adds_counters(tmp_path):
    first = build_sft_dataset(write_jsonl(tmp_path / "a.jsonl", [{"input": "ab", "output": "cd"}] * 2), TOK, 4)
    second = build_sft_dataset(write_jsonl(tmp_path / "b.jsonl", [{"text": "xy"}]), TOK, 4, role="replay")
    both = concat_datasets(first, second)
    assert len(both) == 3 and both.source_lines == [1, 2, 1]
    assert torch.equal(both.tokens, torch.cat([first.tokens, second.tokens]))
    assert torch.equal(both.loss_mask[2], second.loss_mask[0])
    assert both.num_truncated == first.num_truncated + second.num_truncated == 2
    assert both.accounting == first.accounting + second.accounting
    assert [a.role for a in both.accounting] == ["train", "replay"]
    with pytest.raises(ValueError, match="different seq_length"):
        concat_datasets(first, build_sft_dataset(str(tmp_path / "b.jsonl"), TOK, 8))


def test_eval_windows_account_for_the_rows_they_use(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"text": "a" * 10}] * 6)
    (acc,) = build_text_eval_dataset(path, TOK, 10).accounting
    assert (acc.role, acc.rows_read, acc.rows_kept, acc.loss_tokens) == ("general", 6, 6, 65)
    assert acc.truncated == acc.dropped == acc.without_loss == 0
    (capped,) = build_text_eval_dataset(path, TOK, 10, max_windows=2).accounting
    assert (capped.rows_kept, capped.loss_tokens) == (2, 20)  # the second row reaches the cap
    bad = write_jsonl(tmp_path / "late.jsonl", [{"text": "a" * 100}, {"input": "q", "output": "r"}])
    with pytest.raises(ValueError, match=r"late\.jsonl:2: .*needs \{\"text\"\} rows"):  # past the cap too
        build_text_eval_dataset(bad, TOK, 10, max_windows=1)
