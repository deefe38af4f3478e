"""nemo_mft.training.checkpointing on a real 2-rank gloo world (TP=2): save, latest, keep_last, exact
resume, refusals, and a weights-only load of the TP=2 checkpoint into a TP=1 x DP=2 model."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def job(training_job):
    return training_job["checkpoint"]


def test_latest_and_keep_last(job):
    assert job["paths"] == ["iter_0000001", "iter_0000002"]
    assert job["saved_iterations"] == [2], "keep_last=1 deletes the older checkpoint"
    assert job["tracker"] == 2 and job["resolved"] == "iter_0000002"
    assert job["stale_file_gone"], "a stale directory of the same iteration is replaced, not merged"


def test_resume_restores_everything_and_continues_exactly(job):
    assert job["fresh_differs"], "the fresh model must start elsewhere, or the restore proves nothing"
    assert job["weights_restored"] and job["lr_restored"] and job["rng_restored"]
    assert job["common"] == {"iteration": 2, "consumed_samples": 8, "base": {"spec_ppl": 3.5, "gen_ppl": None},
                             "method": "mft", "layout": [2, 1, 1]}
    assert job["resume_exact"], "the next step after a resume must equal the uninterrupted run's, bit for bit"
    assert job["teacher_unchanged"]


def test_refusals_name_the_problem(job):
    assert job["missing_pretrained"].startswith("FileNotFoundError: no checkpoint at ")
    assert "names iteration 7, but" in job["tracker_to_missing_iteration"]
    assert "missing or incomplete" in job["tracker_to_missing_iteration"]
    assert "expected an iteration number, got 'latest'" in job["garbage_tracker"]
    assert job["nothing_here"] is None and job["not_a_directory"] is None


def test_weights_load_into_another_layout(job):
    assert job["pretrained_into_tp1"], "the TP=2 checkpoint's full embedding must arrive whole in a TP=1 model"
    assert job["teacher_synced"]


def test_only_a_real_padding_difference_is_accepted():
    """The structure check's comparison, without a checkpoint: equal shapes are no padding difference (no
    warning), a padding difference is accepted only when both sides hold every token row."""
    from nemo_mft.training.checkpointing import ExpectedTensor, _compare

    embedding = ExpectedTensor(shape=(128, 32), vocab_padded=True)
    norm = ExpectedTensor(shape=(32,), vocab_padded=False)
    expected = {"embedding.word_embeddings.weight": embedding, "decoder.final_layernorm.weight": norm}
    same = {"embedding.word_embeddings.weight": (128, 32), "decoder.final_layernorm.weight": (32,)}
    assert _compare(expected, same, vocab_size=100) == ([], {})
    repadded = dict(same, **{"embedding.word_embeddings.weight": (112, 32)})
    assert _compare(expected, repadded, vocab_size=100) == ([], {"embedding.word_embeddings.weight": (112, 128)})
    problems, padding = _compare(expected, repadded, vocab_size=120)  # 112 stored rows cannot hold 120 tokens
    assert padding == {} and problems == ["embedding.word_embeddings.weight: expected [128, 32], found [112, 32]"]
    assert _compare(expected, repadded, vocab_size=None)[0] != []  # unknown vocabulary: refused


class _WithExtraState(torch.nn.Module):
    """Like a TransformerEngine module: a weight and an ``_extra_state`` entry (TE's FP8 metadata)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))

    def get_extra_state(self):
        return torch.empty(0)

    def set_extra_state(self, state):
        pass


def test_loads_skip_transformer_engines_extra_state_and_nothing_else():
    """A checkpoint of the local spec has no ``_extra_state``: loading it into a TE model must work, while a
    missing weight or an unexpected key is still refused."""
    from nemo_mft.training.checkpointing import CheckpointError, _load_model_state, _without_extra_state

    module = torch.nn.Sequential(_WithExtraState())
    assert "0._extra_state" in module.state_dict()
    request = {"0.weight": "sharded weight", "0._extra_state": "sharded object"}
    assert _without_extra_state(request) == {"0.weight": "sharded weight"}
    _load_model_state(module, {"0.weight": torch.ones(3)}, "ckpt")
    assert torch.equal(module[0].weight.detach(), torch.ones(3))
    with pytest.raises(CheckpointError, match=r"checkpoint ckpt does not fit the model: \['0.weight'\]"):
        _load_model_state(module, {}, "ckpt")
    with pytest.raises(CheckpointError, match="0.bias"):
        _load_model_state(module, {"0.weight": torch.ones(3), "0.bias": torch.ones(3)}, "ckpt")
