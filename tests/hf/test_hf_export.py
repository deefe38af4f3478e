"""Export: megatron's state (imported, not trained) -> the source's HF tensors exactly, and a loadable dir."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_models import CASES, hf_logits


def _source_tensors(hf_dir: str) -> dict:
    from nemo_mft.hf import SafetensorsReader

    with SafetensorsReader(hf_dir) as reader:
        return {name: reader.read(name) for name in reader.names()}


def _export(hf_job, hf_dirs, name: str) -> dict:
    from nemo_mft.hf import describe, megatron_to_hf, read_config

    model = describe(read_config(hf_dirs[name]), seq_length=12)
    return megatron_to_hf(hf_job["states"][name], model)


@pytest.mark.parametrize("name", sorted(CASES))
def test_import_then_export_gives_the_source_tensors(hf_job, hf_dirs, name):
    source = _source_tensors(hf_dirs[name])
    exported = _export(hf_job, hf_dirs, name)
    assert sorted(exported) == sorted(source)
    for key, tensor in source.items():
        assert exported[key].shape == tensor.shape, key
        assert torch.equal(exported[key].to(tensor.dtype), tensor), key
    if "tied" in name:
        assert "lm_head.weight" not in exported


@pytest.mark.parametrize("name", ["llama", "llama_tied", "qwen2", "qwen3"])
def test_sharded_export_loads_with_transformers(hf_job, hf_dirs, tokens, tmp_path, name):
    from nemo_mft.hf import read_config, save_hf_dir

    out = tmp_path / "export"
    source_config = read_config(hf_dirs[name])
    written = save_hf_dir(str(out), _export(hf_job, hf_dirs, name), source_config, tokenizer_dir=hf_dirs[name],
                          max_shard_size="20KB", dtype="float32")
    files = set(os.listdir(out))
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1
    assert all(os.path.isfile(p) for p in written)
    config = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "dtype"} == {k: v for k, v in source_config.items()
                                                                 if k != "dtype"}
    model_cls = CASES[name][1]
    torch.testing.assert_close(hf_logits(str(out), model_cls, tokens), hf_logits(hf_dirs[name], model_cls, tokens),
                               rtol=0, atol=0)
    if "tied" in name:
        import transformers

        loaded = transformers.LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32)
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_export_refuses_a_non_empty_directory(tmp_path):
    from nemo_mft.hf import save_hf_dir

    (tmp_path / "mine.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf_dir(str(tmp_path), {"w": torch.zeros(2)}, {"architectures": ["LlamaForCausalLM"]})
    assert (tmp_path / "mine.txt").read_text() == "user file"


def test_export_casts_and_writes_one_file_below_the_shard_size(tmp_path):
    from safetensors import safe_open

    from nemo_mft.hf import parse_size, save_hf_dir

    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(7) == 7
    with pytest.raises(ValueError):
        parse_size("five")
    save_hf_dir(str(tmp_path / "o"), {"w": torch.ones(3)}, {"bos_token_id": 1, "eos_token_id": 2}, dtype="bfloat16")
    with safe_open(str(tmp_path / "o" / "model.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("w").dtype == torch.bfloat16
    assert json.loads((tmp_path / "o" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "o" / "generation_config.json").read_text())["eos_token_id"] == 2


def test_export_reads_transformer_engine_norm_names(hf_job, hf_dirs):
    from nemo_mft.hf import describe, megatron_to_hf, read_config

    te_names = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
                "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}
    state = {}
    for key, tensor in hf_job["states"]["llama"].items():
        for local, te in te_names.items():
            key = key.replace(local, te)
        state[key] = tensor
    model = describe(read_config(hf_dirs["llama"]), seq_length=12)
    exported = megatron_to_hf(state, model)
    source = _source_tensors(hf_dirs["llama"])
    assert sorted(exported) == sorted(source)
    assert all(torch.equal(exported[k], source[k]) for k in source)
    with pytest.raises(KeyError, match="full GPTModel state"):
        megatron_to_hf({k: v for k, v in state.items() if "layers.1.mlp.linear_fc2" not in k}, model)
