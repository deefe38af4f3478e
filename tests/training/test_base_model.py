"""The base model completes the recipe: config.json -> model keys, its tokenizer, contradictions refused.

Configs are written with transformers' own config classes (the weights file only has to exist here: the
conversion itself is tested in tests/hf).
"""

import json
import os

import pytest

from nemo_mft.config.schema import (ARCHITECTURE_KEYS, CheckpointSection, DatasetSection, FinetuneConfig,
                                    ModelSection, TokenizerSection)
from nemo_mft.training.base_model import MEGATRON, HUGGINGFACE, find_base_model, resolve_base_model

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=6,
              num_key_value_heads=3, rms_norm_eps=1e-5, max_position_embeddings=64)


def _hf_dir(path, config_cls="LlamaConfig", tokenizer=True, weights=True, **fields):
    os.makedirs(path, exist_ok=True)
    architectures = [config_cls.replace("Config", "ForCausalLM")]
    getattr(transformers, config_cls)(**{**COMMON, "architectures": architectures, **fields}).save_pretrained(path)
    if weights:
        open(os.path.join(path, "model.safetensors"), "wb").close()
    if tokenizer:
        with open(os.path.join(path, "tokenizer.json"), "w") as handle:
            json.dump({}, handle)
    return str(path)


def _config(pretrained, model=None, tokenizer=None, seq_length=32):
    return FinetuneConfig(model=model or ModelSection(), tokenizer=tokenizer or TokenizerSection(),
                          dataset=DatasetSection(dataset_root="/data", seq_length=seq_length),
                          checkpoint=CheckpointSection(pretrained_checkpoint=pretrained))


@pytest.mark.parametrize("config_cls, fields, expected", [
    ("LlamaConfig", {}, dict(add_qkv_bias=False, qk_layernorm=False, kv_channels=8, rope_scaling_factor=None,
                             share_embeddings_and_output_weights=False, rotary_base=10000)),
    ("LlamaConfig", {"tie_word_embeddings": True, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
     dict(share_embeddings_and_output_weights=True, rope_scaling_factor=32.0, rotary_base=500000)),
    ("Qwen2Config", {}, dict(add_qkv_bias=True, qk_layernorm=False)),
    ("Qwen3Config", {"head_dim": 32}, dict(add_qkv_bias=False, qk_layernorm=True, kv_channels=32)),
    ("MistralConfig", {"sliding_window": None}, dict(add_qkv_bias=False)),
])
def test_every_architecture_key_comes_from_config_json(tmp_path, config_cls, fields, expected):
    path = _hf_dir(tmp_path / "m", config_cls, **fields)
    config, base = resolve_base_model(_config(path, ModelSection(tensor_model_parallel_size=3)))
    assert base.format == HUGGINGFACE and base.path == path and base.hf_dir == path
    model = config.model
    assert all(getattr(model, key) is not None for key in ARCHITECTURE_KEYS if key != "rope_scaling_factor")
    assert (model.num_layers, model.hidden_size, model.num_attention_heads, model.num_query_groups,
            model.ffn_hidden_size, model.vocab_size, model.layernorm_epsilon) == (4, 48, 6, 3, 96, 100, 1e-5)
    assert (model.normalization, model.activation, model.add_bias_linear) == ("RMSNorm", "swiglu", False)
    assert {key: getattr(model, key) for key in expected} == expected
    assert model.tensor_model_parallel_size == 3  # the layout stays the recipe's
    assert config.tokenizer == TokenizerSection(type="huggingface", path=path)


def test_a_contradicting_key_names_both_values(tmp_path):
    path = _hf_dir(tmp_path / "m")
    with pytest.raises(ValueError) as err:
        resolve_base_model(_config(path, ModelSection(num_layers=32, hidden_size=48, normalization="LayerNorm")))
    text = str(err.value)
    assert "model.num_layers=32" in text and "gives 4 (num_hidden_layers)" in text
    assert "model.normalization='LayerNorm'" in text and "hidden_size" not in text  # an agreeing key is fine


def test_a_layout_the_model_cannot_split_names_config_json(tmp_path):
    path = _hf_dir(tmp_path / "m")  # 3 key/value groups
    with pytest.raises(ValueError, match=r"num_query_groups 3 .*tensor_model_parallel_size 2.*config.json"):
        resolve_base_model(_config(path, ModelSection(tensor_model_parallel_size=2)))


def test_tokenizer_comes_from_the_model_unless_named(tmp_path):
    path = _hf_dir(tmp_path / "m")
    own = tmp_path / "tok.json"
    own.write_text("{}")
    config, _ = resolve_base_model(_config(path, tokenizer=TokenizerSection(type="huggingface", path=str(own))))
    assert config.tokenizer.path == str(own)
    with pytest.raises(ValueError, match="tokenizer.type=byte.*own tokenizer"):
        resolve_base_model(_config(path, tokenizer=TokenizerSection(type="byte")))
    bare = _hf_dir(tmp_path / "bare", tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer.json: set tokenizer.path"):
        resolve_base_model(_config(bare))


@pytest.mark.parametrize("fields, message", [
    ({"num_local_experts": 8}, "mixture-of-experts"),
    ({"architectures": ["GPTNeoXForCausalLM"]}, "supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None}, "rope type 'yarn'"),
])
def test_unsupported_models_are_refused_naming_the_file(tmp_path, fields, message):
    path = _hf_dir(tmp_path / "m")
    config_json = os.path.join(path, "config.json")
    with open(config_json) as handle:
        cfg = json.load(handle)
    cfg.update(fields)
    with open(config_json, "w") as handle:
        json.dump(cfg, handle)
    with pytest.raises(ValueError, match=f"config.json: .*{message}"):
        resolve_base_model(_config(path))


def test_a_sliding_window_shorter_than_the_sequence_is_refused(tmp_path):
    path = _hf_dir(tmp_path / "m", "MistralConfig", sliding_window=16)
    with pytest.raises(ValueError, match="sliding_window=16.*shorter than the sequence length 32"):
        resolve_base_model(_config(path, seq_length=32))
    assert resolve_base_model(_config(path, seq_length=16))[1] is not None


def test_what_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        resolve_base_model(_config(str(tmp_path / "missing")))
    no_weights = _hf_dir(tmp_path / "bin", weights=False)
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        resolve_base_model(_config(no_weights))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face model"):
        resolve_base_model(_config(str(tmp_path / "empty")))


def _megatron_checkpoint(root, hf_files=None):
    path = root / "iter_0000003"
    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    (root / "latest_checkpointed_iteration.txt").write_text("3\n")
    if hf_files:
        (path / "hf").mkdir()
        for name in os.listdir(hf_files):
            (path / "hf" / name).write_bytes(open(os.path.join(hf_files, name), "rb").read())
    return str(path)


def test_a_megatron_checkpoint_with_and_without_hf_files(tmp_path):
    plain = _megatron_checkpoint(tmp_path / "plain")
    config, base = resolve_base_model(_config(str(tmp_path / "plain"), ModelSection(num_layers=3),
                                              TokenizerSection(type="byte")))
    assert base.format == MEGATRON and base.path == plain and base.hf_dir is None
    assert config.model == ModelSection(num_layers=3).with_scratch_defaults()
    with pytest.raises(ValueError, match="tokenizer.type is null and the base model .* carries no tokenizer"):
        resolve_base_model(_config(str(tmp_path / "plain")))
    hf = _hf_dir(tmp_path / "m", "Qwen2Config")
    imported = _megatron_checkpoint(tmp_path / "imported", hf_files=hf)
    config, base = resolve_base_model(_config(str(tmp_path / "imported")))
    assert base.format == MEGATRON and base.hf_dir == os.path.join(imported, "hf")
    assert config.model.add_qkv_bias and config.tokenizer.path == os.path.join(imported, "hf")
    assert set(base.attachments()) == {"hf/config.json", "hf/tokenizer.json"}


def test_from_scratch_recipes_are_complete_without_a_base_model():
    config = _config(None)
    assert config.model.is_complete and config.tokenizer.type == "byte"
    assert resolve_base_model(config) == (config, None)
    assert find_base_model  # imported for the HF-dir tests above


def test_embedding_rows_hold_the_models_vocabulary_not_the_tokenizers(tmp_path):
    from nemo_mft.config import builders

    config, _ = resolve_base_model(_config(_hf_dir(tmp_path / "m", "Qwen2Config"),
                                           ModelSection(make_vocab_size_divisible_by=16)))
    # 100 rows in config.json (Qwen-style spare rows beyond a 90-token tokenizer), padded to 112.
    assert builders.gpt_options(config.model, vocab_size=90, seq_length=8).padded_vocab_size == 112
    assert builders.embedding_rows(config.model, 90) == 100
    with pytest.raises(ValueError, match="the tokenizer has 120 tokens but model.vocab_size is 100"):
        builders.gpt_options(config.model, vocab_size=120, seq_length=8)
