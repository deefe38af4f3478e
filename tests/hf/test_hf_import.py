"""Streaming HF import: megatron-core loaded from each family's checkpoint gives transformers' logits.

transformers is the independent reference (its own rotary, GQA, biases, q/k norms, llama3 rope scaling).
One spawned 4-rank job (conftest `hf_job`) imports every case at TP=1, TP=2, PP=2 and TP=2 x PP=2.
"""

from __future__ import annotations

import pytest
import torch

from hf_job import LAYOUTS
from hf_models import CASES, LLAMA3_ROPE, hf_logits


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"tp{l[0]}pp{l[1]}")
@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(hf_job, hf_dirs, tokens, name, layout):
    expected = hf_logits(hf_dirs[name], CASES[name][1], tokens)
    actual = hf_job["logits"][(name, *layout)]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_llama3_rope_scaling_is_exercised(hf_dirs, tokens, tmp_path):
    """The llama31 case would fail without the scaling: its logits differ from unscaled rope's."""
    import json
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(hf_dirs["llama31"], plain)
    config = json.loads((plain / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": LLAMA3_ROPE["rope_theta"]}
    (plain / "config.json").write_text(json.dumps(config))
    scaled = hf_logits(hf_dirs["llama31"], "LlamaForCausalLM", tokens)
    unscaled = hf_logits(str(plain), "LlamaForCausalLM", tokens)
    assert (scaled - unscaled).abs().max() > 1e-4


def test_tp2_rank_reads_only_its_slices(hf_job, hf_dirs):
    """TP rank 0 of 2 materializes exactly half of every split tensor, all of the replicated ones, and only
    the embedding rows of its vocabulary shard (64 of the 128 padded rows, all real)."""
    from nemo_mft.hf import SafetensorsReader

    for (name, tp, pp), read in hf_job["bytes_read"].items():
        if (tp, pp) != (2, 1):
            continue
        with SafetensorsReader(hf_dirs[name]) as reader:
            sizes = {t: reader.read(t).numel() * reader.read(t).element_size() for t in reader.names()}
            width = reader.read("model.norm.weight").element_size()
        for tensor, nbytes in sizes.items():
            got = read.get(tensor, 0)
            if tensor.endswith(("_proj.weight", "_proj.bias")):
                assert got == nbytes // 2, (name, tensor, got, nbytes)
            elif "embed_tokens" in tensor or tensor == "lm_head.weight":
                assert got == 64 * 32 * width, (name, tensor, got)
            else:  # norms: replicated
                assert got == nbytes, (name, tensor, got, nbytes)
        assert sum(read.values()) < sum(sizes.values())


def test_pp2_first_stage_reads_only_its_layers(hf_job):
    """Stage 0 of 2 reads layer 0, the embedding, nothing of layer 1, the final norm or lm_head."""
    for (name, tp, pp), read in hf_job["bytes_read"].items():
        if pp != 2:
            continue
        assert any(k.startswith("model.layers.0.") for k in read), name
        assert not [k for k in read if k.startswith("model.layers.1.")], name
        assert "model.norm.weight" not in read and "lm_head.weight" not in read, name
        assert "model.embed_tokens.weight" in read, name


def test_teacher_is_synced_from_the_loaded_student(hf_job):
    assert hf_job["teacher_synced"] == {layout: True for layout in LAYOUTS}


@pytest.mark.parametrize("name", ["qwen3", "qwen2"])
def test_transformer_engine_parameter_names_read_the_same_tensors(hf_job, hf_dirs, name):
    """TE's spec holds the pre-attention / pre-MLP norms as linear_qkv / linear_fc1 ``layer_norm_weight`` (its
    other parameters have the local names): each TE name of the TP=1 model reads what the local name loaded.
    Checked against the state dict the local import produced (itself checked against transformers above)."""
    from nemo_mft.hf import describe, read_config
    from nemo_mft.hf.checkpoint_io import SafetensorsReader
    from nemo_mft.hf.convert import _RankReader

    te_names = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
                "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}
    state = hf_job["states"][name]
    model = describe(read_config(hf_dirs[name]), seq_length=16)
    checked = 0
    with SafetensorsReader(hf_dirs[name]) as reader:
        rank_reader = _RankReader(reader, model, tp_rank=0, tp_size=1)
        for key, tensor in state.items():
            prefix, _, layer_sub = key.partition("decoder.layers.")
            if prefix or key.endswith("_extra_state"):
                continue
            layer, _, sub = layer_sub.partition(".")
            te_name = f"decoder.layers.{layer}.{te_names.get(sub, sub)}"
            torch.testing.assert_close(rank_reader.param(te_name, [1, 2], tensor.shape[0]), tensor, rtol=0, atol=0)
            checked += sub in te_names
    assert checked == 2 * 2  # both fused norms of both layers
