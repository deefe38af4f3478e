"""``nemo-mft import`` then ``nemo-mft export``, with no training in between, gives back the source model.

For every tiny family of tests/hf (`hf_models.CASES`: Llama sharded / bf16 / tied / 3.1 rope, Mistral, Qwen2,
Qwen3) and for the real SmolLM2-135M-Instruct: the same tensor names, shapes, dtypes and values (a tied model
stays tied: no lm_head.weight), config.json equal to the source's, generation_config.json and the tokenizer
files (and SmolLM2's chat template) copied, shards with an index above --max-shard-size; the exported SmolLM2
gives transformers' logits of the source. The imported checkpoint is a base model for a run
(`find_base_model`: megatron format, HF files in ``iter_0000000/hf``) and a bf16 import loads into an fp32
model with another vocabulary padding. The commands run through the CLI entry in spawned one-process jobs
(tests/finetune/import_export_job.py); the error cases run in this process, before any process group exists.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_models import CASES, VOCAB, hf_logits
from test_smollm2_fixture import offline, smollm2_dir  # noqa: F401 (fixtures)

# Files the tiny sources carry beside the weights (dummy tokenizer files, transformers' generation config).
TINY_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json")


def _tensors(hf_dir) -> dict:
    from nemo_mft.hf import SafetensorsReader

    with SafetensorsReader(str(hf_dir)) as reader:
        return {name: reader.read(name) for name in reader.names()}


def _config(hf_dir) -> dict:
    with open(os.path.join(str(hf_dir), "config.json")) as handle:
        return json.load(handle)


def _assert_same_tensors(exported: dict, source: dict, *, dtype=None) -> None:
    assert sorted(exported) == sorted(source)
    for name, tensor in source.items():
        expected = tensor if dtype is None else tensor.to(dtype)
        assert exported[name].dtype == expected.dtype, name
        assert exported[name].shape == expected.shape, name
        assert torch.equal(exported[name], expected), name


@pytest.fixture(scope="module")
def tiny(hf_dirs, tmp_path_factory):
    from dist_utils import run_distributed
    from import_export_job import run_tiny

    root = tmp_path_factory.mktemp("import_export")
    result = run_distributed(run_tiny, 1, hf_dirs, str(root))
    print(f"import + export seconds: {result['seconds']}")
    return root, result


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_gives_back_the_source(tiny, hf_dirs, name):
    root, _ = tiny
    source, exported = hf_dirs[name], root / name / "hf"
    _assert_same_tensors(_tensors(exported), _tensors(source))
    if "tied" in name:
        assert "lm_head.weight" not in _tensors(exported)
    assert _config(exported) == _config(source)  # the default dtype is the source's: nothing differs
    for file_name in TINY_FILES:
        assert (exported / file_name).read_bytes() == open(os.path.join(source, file_name), "rb").read(), file_name
    files = os.listdir(exported)
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files  # 20KB shards
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(_tensors(source))
    assert {f for f in files if f.endswith(".safetensors")} == set(index["weight_map"].values())


@pytest.mark.parametrize("name", ["llama_tied", "qwen3"])
def test_exported_model_loads_with_transformers(tiny, hf_dirs, name):
    root, _ = tiny
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    model_cls = CASES[name][1]
    torch.testing.assert_close(hf_logits(str(root / name / "hf"), model_cls, tokens),
                               hf_logits(hf_dirs[name], model_cls, tokens), rtol=0, atol=0)


def test_import_writes_a_weights_only_checkpoint_with_the_hf_files(tiny, hf_dirs):
    from nemo_mft.training.base_model import MEGATRON, find_base_model
    from nemo_mft.training.checkpointing import MANIFEST_FILE, read_common_state, read_tracker

    root, _ = tiny
    ckpt = root / "qwen2" / "ckpt"
    assert read_tracker(str(ckpt)) == 0 and sorted(os.listdir(ckpt)) == ["iter_0000000",
                                                                         "latest_checkpointed_iteration.txt"]
    iteration = ckpt / "iter_0000000"
    manifest = json.loads((iteration / MANIFEST_FILE).read_text())["files"]
    assert {"hf/config.json", "hf/generation_config.json", "hf/tokenizer.json", "hf/tokenizer_config.json"} <= set(
        manifest)
    common = read_common_state(str(iteration))
    assert common["iteration"] == 0 and common["hf_architecture"] == "Qwen2ForCausalLM"
    assert common["imported_from"] == os.path.abspath(hf_dirs["qwen2"]) and common["params_dtype"] == "float32"
    # As checkpoint.pretrained_checkpoint: a megatron checkpoint that describes itself.
    base = find_base_model(str(ckpt), seq_length=12)
    assert (base.format, base.path, base.hf_dir) == (MEGATRON, str(iteration), str(iteration / "hf"))
    assert base.hf_model.family.architecture == "Qwen2ForCausalLM" and base.hf_model.vocab_size == VOCAB
    assert base.hf_config == _config(hf_dirs["qwen2"])


def test_dtype_options(tiny, hf_dirs):
    from nemo_mft.training.checkpointing import read_common_state

    root, _ = tiny
    source = _tensors(hf_dirs["llama"])
    # Imported in bf16, exported with the source config's dtype (float32): bf16-rounded values, in fp32.
    rounded = {name: t.to(torch.bfloat16).to(torch.float32) for name, t in source.items()}
    assert read_common_state(str(root / "llama_as_bf16" / "ckpt" / "iter_0000000"))["params_dtype"] == "bfloat16"
    _assert_same_tensors(_tensors(root / "llama_as_bf16" / "hf"), rounded)
    assert _config(root / "llama_as_bf16" / "hf") == _config(hf_dirs["llama"])
    # Exported with --dtype bfloat16: bf16 tensors, the config says so, every other field is the source's.
    _assert_same_tensors(_tensors(root / "llama" / "hf_bf16"), source, dtype=torch.bfloat16)
    config, source_config = _config(root / "llama" / "hf_bf16"), _config(hf_dirs["llama"])
    assert config.pop("dtype") == "bfloat16" and source_config.pop("dtype") == "float32"
    assert config == source_config
    assert os.listdir(root / "llama" / "hf_bf16").count("model.safetensors") == 1  # below the default 5GB


def test_bf16_import_loads_into_an_fp32_model_with_another_padding(tiny, hf_dirs):
    _, result = tiny
    loaded = result["bf16_into_fp32"]
    assert loaded["padded_rows"] == 112  # the import stored 128 rows (padded to a multiple of 128)
    _assert_same_tensors(loaded["tensors"], _tensors(hf_dirs["llama_bf16"]), dtype=torch.float32)


# ------------------------------------------------------------------------------------ SmolLM2

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back into the forest."


@pytest.fixture(scope="module")
def smollm2(smollm2_dir, tmp_path_factory):  # noqa: F811
    from dist_utils import run_distributed
    from import_export_job import run_smollm2

    root = tmp_path_factory.mktemp("import_export_smollm2")
    result = run_distributed(run_smollm2, 1, str(smollm2_dir), str(root))
    print(f"SmolLM2 import + export: {result['seconds']:.1f} s")
    return root / "smollm2" / "hf"


def test_smollm2_round_trip(smollm2, smollm2_dir):  # noqa: F811
    source = _tensors(smollm2_dir)
    exported = _tensors(smollm2)
    _assert_same_tensors(exported, source)
    assert "lm_head.weight" not in exported and all(t.dtype == torch.float32 for t in exported.values())
    assert _config(smollm2) == _config(smollm2_dir)
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (smollm2 / name).read_bytes() == (smollm2_dir / name).read_bytes(), name
    index = json.loads((smollm2 / "model.safetensors.index.json").read_text())
    shards = sorted(f for f in os.listdir(smollm2) if f.endswith(".safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == set(shards)
    assert all(os.path.getsize(smollm2 / f) < 200e6 + 120e6 for f in shards)  # one tensor may exceed the limit


def test_exported_smollm2_gives_transformers_logits_of_the_source(smollm2, smollm2_dir, offline):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2), local_files_only=True)
    source_tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    messages = [{"role": "user", "content": "Hello!"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == source_tokenizer.apply_chat_template(
        messages, tokenize=False)
    tokens = torch.tensor([tokenizer(SENTENCE).input_ids])
    assert tokens.tolist() == [source_tokenizer(SENTENCE).input_ids]
    logits = {}
    for label, directory in (("exported", smollm2), ("source", smollm2_dir)):
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
        with torch.no_grad():
            logits[label] = model(tokens).logits
        del model
    assert logits["exported"].shape == (1, tokens.shape[1], 49152)
    torch.testing.assert_close(logits["exported"], logits["source"], rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------ errors


def _fake_checkpoint(path, *, hf: bool):
    """A directory that `resolve_checkpoint` takes for a checkpoint (metadata.json), with or without hf/."""
    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    if hf:
        (path / "hf").mkdir()
        (path / "hf" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return str(path)


def _fail(argv, capsys, monkeypatch):
    """``nemo-mft ARGV`` in this process: (exit status, the one stderr line); starting a process group fails."""
    import torch.distributed as dist

    from nemo_mft.finetune import cli

    def forbidden(*args, **kwargs):
        raise AssertionError("a process group was started before the error was found")

    monkeypatch.setattr(dist, "init_process_group", forbidden)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return exit_info.value.code, lines[0]


IMPORT_ERRORS = {
    "no_arguments": ([], "the following arguments are required: HF_DIR, OUT"),
    "missing_dir": (["{tmp}/none", "{tmp}/out"], "no Hugging Face model directory at"),
    "no_config": (["{tmp}/empty", "{tmp}/out"], "has no config.json: not a Hugging Face model directory"),
    "no_weights": (["{tmp}/config_only", "{tmp}/out"], "no safetensors weights"),
    "unsupported": (["{tmp}/gpt2", "{tmp}/out"], "unsupported Hugging Face architecture ['GPT2LMHeadModel']"),
    "out_not_empty": (["{llama}", "{tmp}/full"], "import directory {tmp}/full is not empty"),
    "bad_dtype": (["{llama}", "{tmp}/out", "--dtype", "int8"], "argument --dtype: dtype 'int8' is not one of"),
    "config_dtype": (["{tmp}/f64", "{tmp}/out"], "declares dtype 'float64'; choose one with --dtype"),
}


@pytest.mark.parametrize("case", sorted(IMPORT_ERRORS))
def test_import_errors_are_one_line(case, tmp_path, hf_dirs, capsys, monkeypatch):
    import shutil

    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text("{}")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "gpt2" / "model.safetensors").write_text("")
    shutil.copytree(hf_dirs["llama_tied"], tmp_path / "f64")
    config = _config(tmp_path / "f64")
    (tmp_path / "f64" / "config.json").write_text(json.dumps({**config, "dtype": "float64"}))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("user file")
    args, message = IMPORT_ERRORS[case]
    fill = {"tmp": str(tmp_path), "llama": hf_dirs["llama"]}
    code, line = _fail(["import", *(a.format(**fill) for a in args)], capsys, monkeypatch)
    assert code == 2 and line.startswith("nemo-mft import: error: ")
    assert message.format(**fill) in line
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "full" / "mine.txt").read_text() == "user file"


EXPORT_ERRORS = {
    "no_arguments": ([], "the following arguments are required: --checkpoint, --out"),
    "no_checkpoint": (["--checkpoint", "{tmp}/none", "--out", "{tmp}/out"], "no checkpoint at {tmp}/none"),
    "out_not_empty": (["--checkpoint", "{hf_ckpt}", "--out", "{tmp}/full"], "export directory {tmp}/full is not empty"),
    "no_hf_no_run_config": (["--checkpoint", "{scratch_ckpt}", "--out", "{tmp}/out"],
                            "has no hf/config.json (a model trained from scratch, not from a Hugging Face model): "
                            "pass --run-config"),
    "bad_size": (["--checkpoint", "{hf_ckpt}", "--out", "{tmp}/out", "--max-shard-size", "5 gallons"],
                 "--max-shard-size: max_shard_size '5 gallons' is not a size"),
    "bad_dtype": (["--checkpoint", "{hf_ckpt}", "--out", "{tmp}/out", "--dtype", "fp8"],
                  "argument --dtype: dtype 'fp8' is not one of bf16, fp16, fp32, bfloat16, float16, float32"),
    "max_position_with_hf": (["--checkpoint", "{hf_ckpt}", "--out", "{tmp}/out", "--max-position-embeddings", "8"],
                             "--max-position-embeddings applies only to a model trained from scratch"),
    "missing_run_config": (["--checkpoint", "{scratch_ckpt}", "--out", "{tmp}/out", "--run-config", "{tmp}/no.yaml"],
                           "no run config at {tmp}/no.yaml"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_ERRORS))
def test_export_errors_are_one_line(case, tmp_path, capsys, monkeypatch):
    fill = {"tmp": str(tmp_path), "hf_ckpt": _fake_checkpoint(tmp_path / "hf_ckpt", hf=True),
            "scratch_ckpt": _fake_checkpoint(tmp_path / "scratch_ckpt", hf=False)}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("user file")
    args, message = EXPORT_ERRORS[case]
    code, line = _fail(["export", *(a.format(**fill) for a in args)], capsys, monkeypatch)
    assert code == 2 and line.startswith("nemo-mft export: error: ")
    assert message.format(**fill) in line
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "full" / "mine.txt").read_text() == "user file"
