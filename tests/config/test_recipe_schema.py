"""Recipes compose onto the structured schema; bad keys and values fail before anything is built."""

import os

import pytest
from hydra import compose, initialize_config_dir

from nemo_mft.config import FinetuneConfig, register_schema, validate_config
from nemo_mft.config.schema import MFTSection

CONF_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "conf")


@pytest.fixture(scope="module")
def compose_recipe():
    register_schema()

    def _compose(name, overrides):
        with initialize_config_dir(config_dir=os.path.abspath(CONF_DIR), version_base=None):
            return compose(name, overrides=overrides)

    return _compose


def recipe_names():
    return sorted(f[:-5] for f in os.listdir(CONF_DIR) if f.endswith(".yaml"))


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_validates(compose_recipe, name):
    from omegaconf import OmegaConf

    # Fill the paths a recipe leaves to the user: `???` values, and a huggingface tokenizer's path.
    raw = compose_recipe(name, [])
    missing = sorted(OmegaConf.missing_keys(raw))
    assert "dataset.dataset_root" in missing
    if raw.tokenizer.type == "huggingface" and not raw.tokenizer.path:
        missing.append("tokenizer.path")
    config = validate_config(compose_recipe(name, [f"{key}=/data" for key in missing]))
    assert isinstance(config, FinetuneConfig)


def test_overrides_reach_the_sections(compose_recipe):
    config = validate_config(compose_recipe("mft_tiny", [
        "dataset.dataset_root=/data", "mft.tau=0.1", "mft.method=ft", "model.tensor_model_parallel_size=2",
        "++train.train_iters=7", "evaluation.general_data=null",
    ]))
    assert (config.mft.tau, config.mft.method, config.train.train_iters) == (0.1, "ft", 7)
    assert config.model.tensor_model_parallel_size == 2
    assert config.evaluation.general_data is None


@pytest.mark.parametrize("override, message", [
    ("mft.tau=1.5", "mft.tau must be in"),
    ("mft.method=lora", "mft.method must be one of"),
    ("mft.temperature=0", "mft.temperature must be > 0"),
    ("optimizer.lr=0", "optimizer.lr must be > 0"),
    ("train.global_batch_size=7", "multiple of micro_batch_size"),
    ("model.tensor_model_parallel_size=3", "divisible by tensor_model_parallel_size"),
    ("model.pipeline_model_parallel_size=4", "num_layers 2 must be divisible"),
    ("model.virtual_pipeline_model_parallel_size=2", "virtual_pipeline"),
    ("model.context_parallel_size=2", "context_parallel_size"),
    ("dataset.max_samples=0", "dataset.max_samples"),
    ("tokenizer.type=huggingface", "tokenizer.path is required"),
    ("scheduler.lr_warmup_iters=1000", "lr_warmup_iters must not exceed"),
    ("mft.kd_ce_alpha=1.5", "mft.kd_ce_alpha must be in"),
    ("mft.l2_init_weight=-0.1", "mft.l2_init_weight must be >= 0"),
    ("dataset.replay_fraction=1.0", "dataset.replay_fraction must be in"),
    ("dataset.replay_fraction=0.2", "needs dataset.replay_data"),
])
def test_invalid_values_fail_with_the_key_named(compose_recipe, override, message):
    with pytest.raises(ValueError, match=message):
        validate_config(compose_recipe("mft_tiny", ["dataset.dataset_root=/data", override]))


def test_unknown_key_and_wrong_type_fail_while_composing(compose_recipe):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="model.hidden_sizes"):
        compose_recipe("mft_tiny", ["dataset.dataset_root=/data", "model.hidden_sizes=3"])
    with pytest.raises(ConfigCompositionException, match="train.train_iters"):
        compose_recipe("mft_tiny", ["dataset.dataset_root=/data", "train.train_iters=many"])
    with pytest.raises(ConfigCompositionException, match="mft.inplace_grad"):
        compose_recipe("mft_tiny", ["dataset.dataset_root=/data", "mft.inplace_grad=maybe"])


def test_inplace_grad_is_on_unless_switched_off(compose_recipe):
    assert validate_config(compose_recipe("mft_tiny", ["dataset.dataset_root=/data"])).mft.inplace_grad is True
    off = validate_config(compose_recipe("mft_tiny", ["dataset.dataset_root=/data", "mft.inplace_grad=false"]))
    assert off.mft.inplace_grad is False
    with pytest.raises(ValueError, match="mft.inplace_grad must be true or false"):
        MFTSection(inplace_grad=1)


def test_missing_dataset_root_is_named(compose_recipe):
    with pytest.raises(ValueError, match="dataset.dataset_root"):
        validate_config(compose_recipe("mft_tiny", []))


def test_world_size_must_fit_the_layout(compose_recipe):
    config = validate_config(compose_recipe("mft_tiny", [
        "dataset.dataset_root=/data", "model.tensor_model_parallel_size=2"]))
    assert config.check_world(4) == 2
    with pytest.raises(ValueError, match="cannot be split"):
        config.check_world(3)
    with pytest.raises(ValueError, match="data-parallel size"):
        validate_config(compose_recipe("mft_tiny", [
            "dataset.dataset_root=/data", "train.global_batch_size=6", "train.micro_batch_size=2"])).check_world(2)


def test_baseline_options_reach_the_sections(compose_recipe):
    config = validate_config(compose_recipe("mft_tiny", [
        "dataset.dataset_root=/data", "mft.method=kd_ce", "mft.kd_ce_alpha=0.25", "mft.l2_init_weight=0.1",
        "dataset.replay_data=/general.jsonl", "dataset.replay_fraction=0.2"]))
    assert (config.mft.method, config.mft.kd_ce_alpha, config.mft.l2_init_weight) == ("kd_ce", 0.25, 0.1)
    assert (config.dataset.replay_data, config.dataset.replay_fraction) == ("/general.jsonl", 0.2)
    assert config.mft.label == "kd_ce alpha=0.25 + l2_init=0.1"
    assert validate_config(compose_recipe("mft_tiny", ["dataset.dataset_root=/data", "mft.tau=0.1"])).mft.label \
        == "mft tau=0.1"
