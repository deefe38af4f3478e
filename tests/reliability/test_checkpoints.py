"""Faults of checkpoints on a real 2-rank gloo world (TP=2): damaged files, other architectures, interrupted
saves. Every refusal is a ValueError with one message, the same on both ranks (checked in the job), and
nothing is loaded before the checks pass. The job is tests/reliability/checkpoint_job.py."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

MANIFEST = "nemo_mft_manifest.json"


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    from checkpoint_job import run_all
    from dist_utils import run_distributed

    return run_distributed(run_all, 2, str(tmp_path_factory.mktemp("checkpoints")))


def _one_line_error(message: str, *fragments: str) -> None:
    assert message is not None, "expected a refusal"
    assert message.startswith("CheckpointError: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_the_manifest_lists_every_file_with_its_sha256(job):
    ckpt = job["ckpt"]
    with open(os.path.join(ckpt, MANIFEST)) as handle:
        files = json.load(handle)["files"]
    on_disk = sorted(name for name in os.listdir(ckpt) if name != MANIFEST)
    assert sorted(files) == on_disk and "common.pt" in on_disk and "metadata.json" in on_disk
    assert any(name.endswith(".distcp") for name in on_disk)
    for name, entry in files.items():
        with open(os.path.join(ckpt, name), "rb") as handle:
            data = handle.read()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


def test_an_intact_checkpoint_loads_without_warnings(job):
    assert job["clean_load"] is None
    assert job["clean_load_warnings"] == []


@pytest.mark.parametrize("fault, damaged_file", [("cut_shard", "__1_0.distcp"), ("flipped_shard", "__0_0.distcp"),
                                                 ("flipped_common", "common.pt"),
                                                 ("flipped_metadata", "metadata.json")])
def test_a_damaged_file_is_named_and_its_checksum_differs(job, fault, damaged_file):
    path = os.path.join(job["damage"]["copies"][fault], damaged_file)
    _one_line_error(job["damage"]["verified"][fault], f"{path}: sha256 checksum differs", "is damaged")


def test_a_weights_only_load_is_verified_too(job):
    path = os.path.join(job["damage"]["copies"]["cut_shard"], "__1_0.distcp")
    _one_line_error(job["damage"]["verified_weights"]["cut_shard"], f"{path}: sha256 checksum differs")
    assert job["damage"]["nothing_loaded"], "a refused checkpoint must leave the model as it was"


def test_a_damaged_manifest_is_an_error(job):
    _one_line_error(job["damage"]["verified"]["garbage_manifest"], MANIFEST, "is damaged",
                    "checkpoint.verify_checksums=false")


def test_verification_off_skips_the_checksums(job):
    damage = job["damage"]
    _one_line_error(damage["tampered_verified"], "common.pt: sha256 checksum differs")
    assert damage["tampered_unverified"] is None, "the files are intact: without verification it loads"
    assert damage["loaded_after_skip"]


@pytest.mark.parametrize("case", ["cut_shard", "cut_shard_weights", "cut_common"])
def test_unverified_damage_is_one_line_naming_the_checkpoint(job, case):
    directory = job["damage"]["copies"][case.replace("_weights", "")]
    _one_line_error(job["damage"]["unverified"][case], f"cannot read checkpoint {directory}, damaged or incomplete: ")


def test_a_checkpoint_without_manifest_loads_with_a_warning(job):
    assert job["damage"]["no_manifest"] is None
    warnings = job["damage"]["no_manifest_warnings"]
    assert any(MANIFEST in w and "not verified" in w for w in warnings), warnings


@pytest.mark.parametrize("case, first_difference", [
    ("three_layers", "decoder.layers.mlp.linear_fc1.bias: expected [3, 64], found [2, 64]"),
    ("hidden_48", "decoder.final_layernorm.bias: expected [48], found [32]"),
    ("vocab_130", "embedding.word_embeddings.weight: expected [256, 32], found [128, 32]"),
    ("vocab_112_unknown", "embedding.word_embeddings.weight: expected [112, 32], found [128, 32]"),
])
def test_another_architecture_is_refused_with_the_first_differences(job, case, first_difference):
    result = job["architecture"][case]
    for load in ("resume", "weights"):
        _one_line_error(result[load], "does not fit this model", first_difference)
    assert result["nothing_loaded"]


def test_the_error_lists_only_the_first_few_differences(job):
    message = job["architecture"]["three_layers"]["weights"]
    assert "12 tensors differ" in message and "and 7 more" in message
    assert message.count("expected [3,") == 5


def test_a_vocabulary_too_large_for_the_stored_rows_names_both_vocabulary_tensors(job):
    message = job["architecture"]["vocab_130"]["weights"]
    assert "2 tensors differ" in message and "output_layer.weight: expected [256, 32], found [128, 32]" in message


@pytest.mark.parametrize("case, rows", [("vocab_112", 112), ("vocab_192", 192)])
def test_another_padding_of_the_same_vocabulary_loads_with_a_warning(job, case, rows):
    """Megatron pads the vocabulary to a multiple of the TP size: a weights-only load into another layout
    meets another padding. Every token row is in both, so it loads, and says so."""
    result = job["architecture"][case]
    assert result["resume"] is None and result["weights"] is None and result["rows"] == rows
    assert result["tokens_loaded"] and result["stored_padding_loaded"] and result["new_rows_zero"]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert f"128 rows stored, {rows} here; 6 tensors" in result["warnings"][0]
    assert "the 100 token rows load" in result["warnings"][0]


def test_unexpected_tensors_are_refused(job):
    result = job["architecture"]["no_bias"]
    _one_line_error(result["weights"], "4 tensors differ",
                    "decoder.layers.mlp.linear_fc1.bias: unexpected tensor [2, 64] in the checkpoint")
    _one_line_error(result["resume"], "optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.bias: unexpected")
    assert result["nothing_loaded"]


def test_an_unfinished_save_never_becomes_latest(job):
    before = job["interrupted"]["before"]
    assert "iter_0000002.tmp" in before["listing"], "the simulated leftover is there"
    assert before["resolved"] == "iter_0000001" and before["saved_iterations"] == [1] and before["tracker"] == 1
    _one_line_error(job["interrupted"]["staging_refused"], "iter_0000002.tmp is the directory of an unfinished save")


def test_a_save_failing_after_the_shards_leaves_latest_intact(job):
    failed = job["interrupted"]["failed_save"]
    assert failed["error"].startswith("OSError: [Errno 28]")
    assert failed["resolved"] == "iter_0000001" and failed["saved_iterations"] == [1]
    assert "iter_0000003" not in failed["listing"] and "iter_0000003.tmp" in failed["listing"]


def test_the_next_save_removes_the_leftovers(job):
    after = job["interrupted"]["after"]
    assert after["listing"] == ["iter_0000001", "iter_0000002", "latest_checkpointed_iteration.txt"]
    assert after["saved"] == after["resolved"] == "iter_0000002" and after["tracker"] == 2
    assert after["saved_iterations"] == [1, 2] and after["has_manifest"]
