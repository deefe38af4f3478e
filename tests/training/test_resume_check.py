"""nemo_mft.training.resume_check: which recipe changes a resume refuses, and the data hashes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nemo_mft.config.schema import DatasetSection, FinetuneConfig, MFTSection, TrainSection
from nemo_mft.training.resume_check import changed_keys, file_sha256, fingerprint


@pytest.fixture
def data(tmp_path):
    (tmp_path / "training.jsonl").write_text(json.dumps({"input": "a", "output": "b"}) + "\n")
    (tmp_path / "validation.jsonl").write_text(json.dumps({"input": "c", "output": "d"}) + "\n")
    return tmp_path


def _config(root, **sections) -> FinetuneConfig:
    return FinetuneConfig(dataset=DatasetSection(dataset_root=str(root)), **sections)


def test_identical_recipes_and_free_keys_pass(data):
    stored = fingerprint(_config(data))
    free = _config(data, train=TrainSection(exit_interval=3, micro_batch_size=1, global_batch_size=8))
    free.logger.log_dir = "elsewhere"
    free.checkpoint.save = "ckpt"
    free.model.tensor_model_parallel_size = 2
    free.mft.impl = "torch"
    assert changed_keys(stored, fingerprint(free)) == []


def test_math_changes_are_listed(data):
    stored = fingerprint(_config(data))
    changed = _config(data, mft=MFTSection(tau=0.1, method="kd"), train=TrainSection(seed=7))
    changed.optimizer.lr = 1e-3
    assert changed_keys(stored, fingerprint(changed)) == [
        "mft.method: 'mft' -> 'kd'", "mft.tau: 0.25 -> 0.1", "optimizer.lr: 0.0001 -> 0.001", "train.seed: 1234 -> 7"]


def test_allowed_keys_and_sections(data):
    stored = fingerprint(_config(data))
    changed = _config(data, mft=MFTSection(tau=0.1))
    changed.optimizer.lr, changed.optimizer.min_lr = 1e-3, 1e-5
    assert changed_keys(stored, fingerprint(changed), ["optimizer", "mft.tau"]) == []
    assert changed_keys(stored, fingerprint(changed), ["optimizer.lr"]) == [
        "mft.tau: 0.25 -> 0.1", "optimizer.min_lr: 0.0 -> 1e-05"]
    assert changed_keys(stored, fingerprint(changed), ["optim"]) != []  # a prefix of a name is not a section


def test_longer_run_changes_the_decay_length(data):
    stored = fingerprint(_config(data, train=TrainSection(train_iters=100)))
    longer = fingerprint(_config(data, train=TrainSection(train_iters=300)))
    assert changed_keys(stored, longer) == ["scheduler.lr_decay_iters: 100 -> 300"]
    fixed = _config(data, train=TrainSection(train_iters=300))
    fixed.scheduler.lr_decay_iters = 100
    assert changed_keys(stored, fingerprint(fixed)) == []


def test_data_content_not_path_is_compared(data, tmp_path_factory):
    stored = fingerprint(_config(data))
    copy = tmp_path_factory.mktemp("copy")
    for name in ("training.jsonl", "validation.jsonl"):
        (copy / name).write_bytes((data / name).read_bytes())
    assert changed_keys(stored, fingerprint(_config(copy))) == []
    (copy / "training.jsonl").write_text(json.dumps({"input": "a", "output": "B"}) + "\n")
    (changes,) = changed_keys(stored, fingerprint(_config(copy)))
    assert changes.startswith("data.training (sha256): '") and stored["data.training"][:12] in changes
    assert stored["data.training"] == file_sha256(str(data / "training.jsonl"))


def test_a_key_known_to_one_side_only_is_a_change(data):
    stored = fingerprint(_config(data))
    newer = dict(stored, **{"mft.new_option": 1})
    assert changed_keys(stored, newer) == ["mft.new_option: '<absent>' -> 1"]
    assert dataclasses.is_dataclass(_config(data))
