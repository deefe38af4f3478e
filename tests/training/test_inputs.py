"""nemo_mft.training.inputs: the run's datasets, the replay mix and its errors (before anything is built)."""

import json

import pytest
import torch

from nemo_mft.config.schema import DatasetSection, EvaluationSection, FinetuneConfig
from nemo_mft.training.inputs import load_run_data, replay_rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(root, **dataset):
    return FinetuneConfig(dataset=DatasetSection(dataset_root=str(root), seq_length=16, **dataset),
                          evaluation=EvaluationSection(max_eval_windows=4))


@pytest.fixture
def data(tmp_path):
    _write(tmp_path / "training.jsonl", [{"input": f"q{i} ", "output": f"a{i}"} for i in range(10)])
    _write(tmp_path / "validation.jsonl", [{"input": "q ", "output": "a"}])
    _write(tmp_path / "general.jsonl", [{"text": f"general text {i}"} for i in range(30)])
    return tmp_path


def test_replay_rows_make_up_the_fraction():
    assert replay_rows(10, 0.0) == 0
    assert replay_rows(10, 0.2) == 2 and replay_rows(500, 0.2) == 125 and replay_rows(500, 0.5) == 500
    with pytest.raises(ValueError, match="replay fraction"):
        replay_rows(10, 1.0)


def test_replay_rows_follow_the_domain_budget(data):
    plain = load_run_data(_config(data, max_samples=8))
    mixed = load_run_data(_config(data, max_samples=8, replay_data=str(data / "general.jsonl"), replay_fraction=0.2))
    assert (len(plain.train), plain.num_replay) == (8, 0)
    assert (len(mixed.train), mixed.num_replay) == (10, 2)
    assert torch.equal(mixed.train.tokens[:8], plain.train.tokens)  # the domain rows are unchanged
    # Replay rows are {"text"} rows: loss on every token, starting at the position after the bos.
    text = [mixed.tokenizer.decode(row[row != mixed.tokenizer.pad_id][1:].tolist()) for row in mixed.train.tokens[8:]]
    assert all(t.startswith("general text") for t in text)
    assert all(bool(mixed.train.loss_mask[i, 0]) for i in (8, 9))
    # A seeded subset: the same seed picks the same rows.
    again = load_run_data(_config(data, max_samples=8, replay_data=str(data / "general.jsonl"), replay_fraction=0.2))
    assert torch.equal(again.train.tokens, mixed.train.tokens)


def test_replay_errors_name_the_file(data):
    with pytest.raises(FileNotFoundError, match="dataset.replay_data not found"):
        load_run_data(_config(data, replay_data=str(data / "missing.jsonl"), replay_fraction=0.5))
    with pytest.raises(ValueError, match=r"general.jsonl: 30 rows, but .* needs 40"):
        load_run_data(_config(data, max_samples=10, replay_data=str(data / "general.jsonl"), replay_fraction=0.8))
    (data / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_run_data(_config(data, replay_data=str(data / "bad.jsonl"), replay_fraction=0.1))


def test_the_settings_validate_themselves():
    from nemo_mft.data import OVERFLOW_POLICIES

    section = DatasetSection(dataset_root="/d")
    assert (section.on_overflow, section.max_no_loss_fraction) == ("truncate", 0.1)
    for policy in OVERFLOW_POLICIES:
        assert DatasetSection(dataset_root="/d", on_overflow=policy).on_overflow == policy
    with pytest.raises(ValueError, match="dataset.on_overflow must be one of truncate, drop, error, got 'cut'"):
        DatasetSection(dataset_root="/d", on_overflow="cut")
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="dataset.max_no_loss_fraction must be a number in"):
            DatasetSection(dataset_root="/d", max_no_loss_fraction=bad)
    assert DatasetSection(dataset_root="/d", max_no_loss_fraction=1).max_no_loss_fraction == 1


def test_accounting_covers_every_file_read(data):
    run = load_run_data(_config(data, max_samples=8, replay_data=str(data / "general.jsonl"), replay_fraction=0.2))
    with_general = load_run_data(FinetuneConfig(
        dataset=DatasetSection(dataset_root=str(data), seq_length=16),
        evaluation=EvaluationSection(max_eval_windows=4, general_data=str(data / "general.jsonl"))))
    assert [a.role for a in run.accounting] == ["train", "replay", "validation"]
    assert [a.role for a in with_general.accounting] == ["train", "validation", "general"]
    train, replay, validation = run.accounting
    assert (train.path, train.rows_read, train.rows_kept) == (str(data / "training.jsonl"), 10, 8)
    assert (replay.rows_read, replay.rows_kept) == (30, 2) and (validation.rows_read, validation.rows_kept) == (1, 1)
    assert train.loss_tokens + replay.loss_tokens == run.train.num_loss_tokens
    assert validation.loss_tokens == run.validation.num_loss_tokens
    general = with_general.accounting[2]
    assert general.loss_tokens == with_general.general.num_loss_tokens == 4 * 16
    lines = run.accounting_summary()
    assert len(lines) == 3 and lines[0].startswith(f"train {data / 'training.jsonl'}: 8 of 10 rows kept")
    assert json.loads(json.dumps(run.accounting_dict()))["replay"]["rows_kept"] == 2


@pytest.fixture
def long_rows(tmp_path):
    """20 training rows, rows 3 and 7 longer than seq_length 16 + 1 tokens (with the bos and the eos)."""
    rows = [{"input": f"q{i} ", "output": "a" * (30 if i in (2, 6) else 3)} for i in range(20)]
    _write(tmp_path / "training.jsonl", rows)
    _write(tmp_path / "validation.jsonl", [{"input": "q ", "output": "a"}, {"input": "q ", "output": "b" * 40}])
    return tmp_path


def test_on_overflow_truncate_counts(long_rows):
    run = load_run_data(_config(long_rows))
    train, validation = run.accounting
    assert (train.rows_kept, train.truncated, train.first_truncated, train.dropped) == (20, 2, 3, 0)
    assert (validation.truncated, validation.first_truncated) == (1, 2)
    assert len(run.train) == 20 and run.train.num_truncated == 2


def test_on_overflow_drop_removes_and_counts(long_rows):
    run = load_run_data(_config(long_rows, on_overflow="drop"))
    train, validation = run.accounting
    assert (train.rows_kept, train.truncated, train.dropped, train.first_dropped) == (18, 0, 2, 3)
    assert (validation.rows_kept, validation.dropped, validation.first_dropped) == (1, 1, 2)
    assert 3 not in run.train.source_lines and 7 not in run.train.source_lines and len(run.train) == 18


def test_on_overflow_error_names_the_count_and_the_first_line(long_rows):
    path = long_rows / "training.jsonl"
    with pytest.raises(ValueError, match=rf"^{path}:3: 2 of 20 rows are longer than seq_length \+ 1 = 17 tokens"):
        load_run_data(_config(long_rows, on_overflow="error"))
    _write(long_rows / "training.jsonl", [{"input": "q ", "output": "a"}] * 4)
    with pytest.raises(ValueError, match=rf"^{long_rows / 'validation.jsonl'}:2: 1 of 2 rows are longer"):
        load_run_data(_config(long_rows, on_overflow="error"))


def _rows_without_loss(count, total):
    """``total`` rows, the last ``count`` of them with a prompt that fills the window of 16 + 1 tokens."""
    return [{"input": "p" * 20 if i >= total - count else f"q{i} ", "output": "a"} for i in range(total)]


def test_no_loss_share_at_the_threshold_is_kept_and_counted(data):
    _write(data / "training.jsonl", _rows_without_loss(2, 20))  # 2 / 20 = 0.1, the default: not more
    (train, _) = load_run_data(_config(data)).accounting
    assert (train.without_loss, train.first_without_loss, train.without_loss_share) == (2, 19, 0.1)
    assert len(load_run_data(_config(data)).train) == 20


def test_no_loss_share_above_the_threshold_is_an_error(data):
    path = data / "training.jsonl"
    _write(path, _rows_without_loss(3, 20))  # 3 / 20 = 0.15 > 0.1
    with pytest.raises(ValueError, match=rf"^{path}:18: 3 of 20 rows \(15.0%\) have no answer token with loss"
                                         r".*dataset.max_no_loss_fraction is 0.1"):
        load_run_data(_config(data))
    assert load_run_data(_config(data, max_no_loss_fraction=0.15)).accounting[0].without_loss == 3
    # Empty answers count too: only their eos would be scored.
    _write(path, [{"input": "q", "output": ""}] * 2 + [{"input": "q", "output": "a"}] * 8)
    with pytest.raises(ValueError, match=rf"^{path}:1: 2 of 10 rows \(20.0%\)"):
        load_run_data(_config(data))


def test_no_loss_share_of_the_replay_file(data):
    replay = data / "replay.jsonl"
    _write(replay, [{"text": ""}] * 3 + [{"text": f"general {i}"} for i in range(7)])
    with pytest.raises(ValueError, match=rf"^{replay}:1: 3 of 10 rows \(30.0%\)"):
        load_run_data(_config(data, replay_data=str(replay), replay_fraction=0.5))
    run = load_run_data(_config(data, replay_data=str(replay), replay_fraction=0.5, max_no_loss_fraction=0.3))
    assert run.accounting[1].role == "replay" and run.accounting[1].without_loss == 3


def test_a_training_file_with_no_loss_at_all(data):
    path = data / "training.jsonl"
    _write(path, _rows_without_loss(3, 3))
    with pytest.raises(ValueError, match=rf"^{path}:1: nothing to train on"):
        load_run_data(_config(data, max_no_loss_fraction=1.0))
    _write(path, [{"input": "q", "output": "a" * 40}] * 2)
    with pytest.raises(ValueError, match=rf"^{path}: nothing to train on: none of its 2 rows is left \(2 dropped"):
        load_run_data(_config(data, on_overflow="drop"))


def test_a_validation_set_with_nothing_to_score_is_an_error(data):
    path = data / "validation.jsonl"
    _write(path, _rows_without_loss(2, 2))  # every answer lost to truncation
    with pytest.raises(ValueError, match=rf"^{path}:1: nothing to score"):
        load_run_data(_config(data))
    _write(path, [{"input": "q", "output": "a" * 40}])
    with pytest.raises(ValueError, match=rf"^{path}: nothing to score: none of its 1 rows is left"):
        load_run_data(_config(data, on_overflow="drop"))
    # Rows without loss in an evaluation set are counted, not refused, while something is left to score.
    _write(path, _rows_without_loss(2, 3))
    assert load_run_data(_config(data)).accounting[1].without_loss == 2


def test_a_general_set_with_nothing_to_score_is_an_error(data):
    empty = data / "empty_general.jsonl"
    _write(empty, [{"text": ""}])  # the stream is one eos: no label
    config = FinetuneConfig(dataset=DatasetSection(dataset_root=str(data), seq_length=16),
                            evaluation=EvaluationSection(general_data=str(empty)))
    with pytest.raises(ValueError, match=rf"^{empty}: nothing to score"):
        load_run_data(config)
