"""nemo_mft.bridge.recipe and `nemo-mft bridge` against the real Megatron-Bridge 0.3.1 recipes (run in .venv-bridge).

Composition: Bridge's own recipe functions (Llama 3.2 1B SFT and PEFT) with a YAML file and Hydra-style overrides,
applied by Bridge's override utilities, plus our `mft:` section; the expected values are the file's and the
overrides' (or, for the keys nobody touched, a fresh call of the same recipe function). Bad keys and values give
one clear error. The command line: --help, --print-config, its one-line errors, and its error without Bridge
installed (in the main .venv) and without TransformerEngine (this venv).

The recipes look up meta-llama/Llama-3.2-1B's config.json on the Hugging Face hub (to_megatron_provider with
load_weights=False: the configuration only). The tests run offline: `hf_offline` writes that model's published
config.json into a temporary HF cache and points transformers (4.57) at it, offline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpu_bridge import install_stand_ins

install_stand_ins()

from megatron.bridge.recipes.llama import llama3  # noqa: E402

from nemo_mft.bridge.recipe import RecipeError, compose, resolve_recipe  # noqa: E402
from nemo_mft.config.schema import MFTSection  # noqa: E402
from nemo_mft.finetune.bridge_command import bridge_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SFT = "megatron.bridge.recipes.llama.llama3:llama32_1b_sft_config"
PEFT = "megatron.bridge.recipes.llama.llama3:llama32_1b_peft_config"
HUB_ID = "meta-llama/Llama-3.2-1B"
# The published config.json of meta-llama/Llama-3.2-1B.
LLAMA32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
}


@pytest.fixture(scope="module", autouse=True)
def hf_offline(tmp_path_factory):
    """A Hugging Face cache holding meta-llama/Llama-3.2-1B's config.json; transformers reads it, offline."""
    import transformers.utils.hub as hub

    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA32_1B_CONFIG))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub, "TRANSFORMERS_CACHE", str(cache))
        patch.setattr(hub, "_is_offline_mode", True)
        yield cache


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_recipe_comes_from_hugging_face_config(hf_offline):
    config, mft = compose(SFT)
    assert (config.model.num_layers, config.model.hidden_size, config.model.num_query_groups) == (16, 2048, 8)
    assert mft == MFTSection()  # no mft section: the defaults
    assert config.peft is None


def test_yaml_and_overrides_set_bridge_fields_and_the_mft_section(tmp_path):
    file = _yaml(tmp_path / "run.yaml", """
train:
  train_iters: 7
  global_batch_size: 16
model:
  num_layers: 4
  tensor_model_parallel_size: 2
optimizer:
  lr: 2.0e-5
dataset:
  dataset_kwargs:
    pad_to_max_length: false
mft:
  method: kd
  tau: 0.1
""")
    config, mft = compose(SFT, file, ["train.train_iters=9", "mft.temperature=2.0", "scheduler.lr_warmup_iters=3",
                                      "checkpoint.save=/shared/ckpt", "+dataset.dataset_kwargs.note=x"])
    fresh = llama3.llama32_1b_sft_config()
    assert config.train.train_iters == 9  # the override wins over the file
    assert config.train.global_batch_size == 16 and config.model.num_layers == 4
    assert config.model.tensor_model_parallel_size == 2 and config.optimizer.lr == 2e-5
    assert config.scheduler.lr_warmup_iters == 3 and config.checkpoint.save == "/shared/ckpt"
    assert config.dataset.dataset_kwargs == {"pad_to_max_length": False, "note": "x"}  # a free-form dict: any key
    assert mft == MFTSection(method="kd", tau=0.1, temperature=2.0)
    # What nobody set is the recipe's, including the objects Bridge's conversion leaves out.
    assert config.train.micro_batch_size == fresh.train.micro_batch_size
    assert config.model.hidden_size == fresh.model.hidden_size and config.optimizer.adam_beta2 == fresh.optimizer.adam_beta2
    assert config.model.activation_func is fresh.model.activation_func
    assert config.mixed_precision == fresh.mixed_precision
    assert type(config) is type(fresh) and not hasattr(config, "mft")


def test_recipe_given_as_a_function_and_by_name_agree():
    by_object, _ = compose(llama3.llama32_1b_sft_config, overrides=["train.train_iters=5"])
    by_name, _ = compose(SFT.replace(":", "."), overrides=["train.train_iters=5"])  # module.function
    assert resolve_recipe(SFT) is llama3.llama32_1b_sft_config
    assert dataclasses.asdict(by_object.train) == dataclasses.asdict(by_name.train)


@pytest.mark.parametrize("name", ["llama32_1b_mft.yaml", "llama32_1b_lora_mft.yaml"])
def test_the_example_files_of_conf_bridge_compose(name):
    from nemo_mft.bridge.validate import check_mft_config

    config, mft = compose(None, ROOT / "conf" / "bridge" / name)
    assert mft.method == "mft" and mft.tau == 0.25 and config.train.train_iters == 500
    assert config.dataset.packed_sequence_specs is None  # the recipe packs; the files switch it off
    check_mft_config(config, mft)
    if "lora" in name:
        from megatron.bridge.peft.lora import LoRA

        assert isinstance(config.peft, LoRA) and (config.peft.dim, config.peft.alpha) == (16, 32)
        assert list(config.peft.target_modules) == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    else:
        assert config.peft is None


def test_the_recipes_packed_sequences_are_refused_before_training():
    """Bridge's Llama SFT/PEFT recipes pack sequences; MFT refuses that up front (not at the first step)."""
    from nemo_mft.bridge.validate import check_mft_config

    config, mft = compose(SFT, None, [])
    assert config.dataset.packed_sequence_specs.packed_sequence_size == 4096
    with pytest.raises(ValueError, match=r"packed sequences .* set dataset.packed_sequence_specs=null"):
        check_mft_config(config, mft)
    config, mft = compose(SFT, None, ["dataset.packed_sequence_specs=null"])
    check_mft_config(config, mft)


def test_recipe_arguments_from_overrides_build_the_lora():
    config, _ = compose(None, ROOT / "conf" / "bridge" / "llama32_1b_lora_mft.yaml",
                        ["recipe.kwargs.peft_scheme.dim=8", "mft.method=mft_incorrect_only"])
    assert config.peft.dim == 8 and config.peft.alpha == 32
    config, mft = compose(PEFT, overrides=["+recipe.kwargs.peft_scheme=dora"])
    assert type(config.peft).__name__ == "DoRA" and mft.method == "mft"


@pytest.mark.parametrize("file_text, overrides, message", [
    (None, ["mft.taux=0.1"], "Could not override 'mft.taux'"),
    (None, ["+mft.taux=0.1"], "taux"),
    ("mft:\n  taux: 0.1\n", [], "taux"),
    (None, ["mft.tau=abc"], "could not be converted to Float"),
    (None, ["mft.method=sft"], "mft.method must be one of"),
    (None, ["mft.tau=1.5"], "mft.tau must be in [0, 1]"),
    ("train:\n  trian_iters: 5\n", [], "not a key of the Megatron-Bridge configuration of this recipe: train.trian_iters"),
    (None, ["+model.num_layerz=2"], "model.num_layerz"),
    (None, ["train.trian_iters=5"], "Could not override 'train.trian_iters'"),
    ("model:\n  activation_func: relu\n", [], "model.activation_func is an object"),
    ("- a\n- b\n", [], "the top level must be a mapping"),
    ("recipe:\n  name: x\n", [], "the recipe: section takes function"),
    (None, ["+recipe.kwargs.no_such_argument=1"], "no_such_argument"),
])
def test_bad_keys_and_values_are_clear_errors(tmp_path, file_text, overrides, message):
    file = _yaml(tmp_path / "bad.yaml", file_text) if file_text is not None else None
    with pytest.raises(RecipeError) as err:
        compose(SFT, file, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_peft_object_is_set_through_the_recipe_arguments_only(tmp_path):
    for file_text, overrides in ((None, ["peft.dim=8"]), ("peft:\n  dim: 8\n", [])):
        file = _yaml(tmp_path / "peft.yaml", file_text) if file_text else None
        with pytest.raises(RecipeError) as err:
            compose(PEFT, file, overrides)
        assert "peft is an object, not a configuration value" in str(err.value)
        assert "recipe.kwargs.peft_scheme" in str(err.value)


@pytest.mark.parametrize("recipe, message", [
    (None, "no recipe: pass one (--recipe module:function)"),
    ("no_such_package.recipes:f", "no module 'no_such_package'"),
    ("megatron.bridge.recipes.llama.llama3:llama99_config", "has no 'llama99_config'"),
    ("megatron.bridge.recipes.llama.llama3:AutoBridge", "not a function"),
    ("llama32_1b_sft_config", "expected module:function"),
    ("megatron.bridge.recipes.llama.llama3:torch", "is a module, not a function"),
])
def test_bad_recipes_are_clear_errors(recipe, message):
    with pytest.raises(RecipeError) as err:
        compose(recipe)
    assert message in str(err.value)


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        compose(SFT, tmp_path / "nope.yaml")


def test_the_command_prints_the_composed_configuration(capsys):
    assert bridge_main(["--recipe", SFT, "--print-config", "train.train_iters=11", "mft.tau=0.5"]) == 0
    out = capsys.readouterr().out
    assert "train_iters: 11" in out and "mft: MFTSection(method='mft', tau=0.5" in out


def test_the_command_reports_user_errors_on_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        bridge_main(["--recipe", SFT, "--print-config", "mft.method=sft"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nemo-mft bridge: error: mft.method must be one of") and err.count("\n") == 1
    with pytest.raises(SystemExit) as stop:
        bridge_main(["--recipe", SFT, "notanoverride"])
    assert stop.value.code == 2 and "'notanoverride' is not an override" in capsys.readouterr().err


def _cli(python: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([python, "-m", "nemo_mft", "bridge", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_bridge_help_works():
    proc = _cli(sys.executable, "--help")
    assert proc.returncode == 0 and "--recipe MODULE:FUNCTION" in proc.stdout and "--config-file" in proc.stdout
    assert "llama32_1b_sft_config" in proc.stdout


def test_without_transformer_engine_the_command_says_so():
    # This venv has Bridge but no TransformerEngine (the stand-in lives only in test processes).
    from nemo_mft.bridge import TE_MISSING  # importable here: this test process has the stand-in

    proc = _cli(sys.executable, "--recipe", SFT)
    expected = TE_MISSING.format(module="transformer_engine")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"nemo-mft bridge: error: {expected}"


def _python_without_bridge() -> str:
    """The main virtualenv (transformers 5, no Megatron-Bridge): $NEMO_MFT_CPU_PYTHON, else the checkout's .venv."""
    for candidate in (os.environ.get("NEMO_MFT_CPU_PYTHON"), str(ROOT / ".venv" / "bin" / "python")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("no Python without Megatron-Bridge: build the checkout's .venv (make venv) or set "
                         "NEMO_MFT_CPU_PYTHON")


def test_without_bridge_the_command_says_how_to_install_it():
    python = _python_without_bridge()
    check = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('megatron.bridge'))"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "None", f"{python} has Megatron-Bridge"
    from nemo_mft.bridge import BRIDGE_MISSING

    proc = _cli(python, "--recipe", SFT, "mft.tau=0.1")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"nemo-mft bridge: error: {BRIDGE_MISSING}"
    assert _cli(python, "--help").returncode == 0  # help needs no Bridge
