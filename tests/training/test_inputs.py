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
