"""Export of a model trained from scratch (a checkpoint without ``hf/``): ``nemo-mft export --run-config``
makes a Llama config.json from the run's model section (`nemo_mft.export.hf_llama.llama_config`), and the
exported `transformers` LlamaForCausalLM gives the megatron-core GPT's logits.

`transformers` is the independent reference: it implements Llama (rotary, GQA, SwiGLU, RMSNorm) on its own.
One spawned process builds two random Llama-shaped models from recipe sections (untied with a Hugging Face
tokenizer; tied with Llama 3.1 rope scaling and the byte tokenizer), saves each as a weights-only checkpoint
without HF files, and runs the exports through the CLI entry (`nemo_mft.finetune.cli.main`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
import torch
from omegaconf import OmegaConf

from nemo_mft.config import FinetuneConfig, builders
from nemo_mft.config.schema import ModelSection
from nemo_mft.export import check_llama_compatible

SEQ = 12
HF_TOKENIZER_VOCAB = 320  # tests/chat_tokenizer.py's BPE; the model pads it to 384
BYTE_VOCAB = 259
LLAMA_SECTION = ModelSection(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                             ffn_hidden_size=48, normalization="RMSNorm", activation="swiglu", add_bias_linear=False,
                             rotary_base=5000, layernorm_epsilon=1e-6).with_scratch_defaults()
TIED_SECTION = dataclasses.replace(LLAMA_SECTION, share_embeddings_and_output_weights=True, rotary_base=500000,
                                   rope_scaling_factor=8.0, make_vocab_size_divisible_by=16)


def _run_config(path, section: ModelSection, tokenizer: dict, **model_overrides) -> str:
    """A run's resolved config.yaml with ``section`` as its model."""
    cfg = OmegaConf.structured(FinetuneConfig)
    cfg.dataset.dataset_root = str(path.parent)
    cfg.dataset.seq_length = SEQ
    for key, value in {**dataclasses.asdict(section), **model_overrides}.items():
        cfg.model[key] = value
    for key, value in tokenizer.items():
        cfg.tokenizer[key] = value
    path.write_text(OmegaConf.to_yaml(cfg))
    return str(path)


def _cli(*argv: str) -> tuple[int, str]:
    """``nemo-mft ARGV`` in this process: (exit status, stderr)."""
    from nemo_mft.finetune import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.main(list(argv))
        except SystemExit as stop:
            return stop.code, err.getvalue()
    return 0, err.getvalue()


def _train_from_scratch(section: ModelSection, vocab: int, save: str, tokens: torch.Tensor) -> torch.Tensor:
    """A randomly initialized model of ``section`` (every tensor perturbed, so that a swapped mapping cannot
    pass), saved weights-only without HF files; its logits on ``tokens``."""
    from nemo_mft.megatron import build_model, destroy_parallel, initialize_parallel, megatron_on_cpu
    from nemo_mft.training.checkpointing import save_weights

    with megatron_on_cpu():
        layout = initialize_parallel(1, 1, seed=7)
        gpt_options = builders.gpt_options(section, vocab_size=vocab, seq_length=SEQ)
        chunks = build_model(builders.transformer_config(section), builders.layer_spec(section), gpt_options,
                             groups=layout.groups, with_teacher=False)
        gpt = chunks[0].student.eval()
        with torch.no_grad():  # norms start at 1
            for param in gpt.parameters():
                param.add_(0.05 * torch.randn_like(param))
            logits = gpt(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), attention_mask=None)
        save_weights(save, chunks, layout, common={})
        destroy_parallel()
    return logits


def _job(rank, world_size, root: str, untied_config: str, tied_config: str, wrong_vocab_config: str) -> dict:
    tokens = torch.randint(0, BYTE_VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    logits = {"untied": _train_from_scratch(LLAMA_SECTION, HF_TOKENIZER_VOCAB, f"{root}/untied/ckpt", tokens),
              "tied": _train_from_scratch(TIED_SECTION, BYTE_VOCAB, f"{root}/tied/ckpt", tokens)}
    ckpt = f"{root}/untied/ckpt"
    results = {
        "default": _cli("export", "--checkpoint", ckpt, "--run-config", untied_config, "--out", f"{root}/untied/hf"),
        "sharded": _cli("export", "--checkpoint", ckpt, "--run-config", untied_config, "--out",
                        f"{root}/untied/hf_sharded", "--max-shard-size", "20KB", "--max-position-embeddings", "64"),
        "bf16": _cli("export", "--checkpoint", ckpt, "--run-config", untied_config, "--out", f"{root}/untied/hf_bf16",
                     "--dtype", "bf16"),
        "tied": _cli("export", "--checkpoint", f"{root}/tied/ckpt", "--run-config", tied_config, "--out",
                     f"{root}/tied/hf"),
        "wrong_vocab": _cli("export", "--checkpoint", ckpt, "--run-config", wrong_vocab_config, "--out",
                            f"{root}/untied/hf_wrong"),
    }
    return {"tokens": tokens, "logits": logits, "results": results}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from chat_tokenizer import write_chat_tokenizer
    from dist_utils import run_distributed

    root = tmp_path_factory.mktemp("scratch_export")
    tokenizer_dir = write_chat_tokenizer(str(root / "tokenizer"), jinja_file=True)
    hf_tokenizer = {"type": "huggingface", "path": tokenizer_dir}
    configs = (_run_config(root / "untied.yaml", LLAMA_SECTION, hf_tokenizer),
               _run_config(root / "tied.yaml", TIED_SECTION, {"type": "byte"}),
               _run_config(root / "wrong.yaml", LLAMA_SECTION, hf_tokenizer, vocab_size=500))
    job = run_distributed(_job, 1, str(root), *configs)
    return root, tokenizer_dir, job


def _hf_logits(out_dir, tokens: torch.Tensor) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def test_export_matches_megatron_logits(exported):
    root, tokenizer_dir, job = exported
    assert job["results"]["default"][0] == 0
    out = root / "untied" / "hf"
    logits = job["logits"]["untied"]
    assert logits.shape == (2, SEQ, 384)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == HF_TOKENIZER_VOCAB
    assert (config["num_key_value_heads"], config["head_dim"], config["rope_theta"]) == (2, 8, 5000)
    assert config["rms_norm_eps"] == 1e-6 and config["max_position_embeddings"] == SEQ
    assert config["torch_dtype"] == "float32"  # the run's model.params_dtype
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2) and not config["tie_word_embeddings"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == open(f"{tokenizer_dir}/{name}", "rb").read(), name
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    torch.testing.assert_close(_hf_logits(out, job["tokens"]), logits[..., :HF_TOKENIZER_VOCAB], rtol=1e-4, atol=1e-4)


def test_sharded_export_loads(exported):
    root, _, job = exported
    assert job["results"]["sharded"][0] == 0
    out = root / "untied" / "hf_sharded"
    assert len(list(out.glob("*.safetensors"))) > 2 and (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 64
    torch.testing.assert_close(_hf_logits(out, job["tokens"]), job["logits"]["untied"][..., :HF_TOKENIZER_VOCAB],
                               rtol=1e-4, atol=1e-4)


def test_bf16_export(exported):
    from safetensors.torch import load_file

    root, _, job = exported
    assert job["results"]["bf16"][0] == 0
    tensors = load_file(str(root / "untied" / "hf_bf16" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert tensors["model.embed_tokens.weight"].shape == (HF_TOKENIZER_VOCAB, 32)
    assert tensors["lm_head.weight"].shape == (HF_TOKENIZER_VOCAB, 32)
    assert json.loads((root / "untied" / "hf_bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_tied_model_with_llama31_rope_and_the_byte_tokenizer(exported):
    from safetensors.torch import load_file

    root, _, job = exported
    assert job["results"]["tied"][0] == 0
    out = root / "tied" / "hf"
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["vocab_size"] == BYTE_VOCAB
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert (config["bos_token_id"], config["eos_token_id"]) == (257, 258)
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))
    assert not (out / "tokenizer.json").exists()  # the byte tokenizer has no files
    torch.testing.assert_close(_hf_logits(out, job["tokens"]), job["logits"]["tied"][..., :BYTE_VOCAB],
                               rtol=1e-4, atol=1e-4)


def test_a_run_config_of_another_vocabulary_is_refused(exported):
    root, _, job = exported
    code, err = job["results"]["wrong_vocab"]
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("nemo-mft export: error: checkpoint ") and "does not fit this model" in err
    assert not (root / "untied" / "hf_wrong").exists()


@pytest.mark.parametrize("change, message", [
    (dict(normalization="LayerNorm"), "RMSNorm"),
    (dict(activation="gelu"), "swiglu"),
    (dict(add_bias_linear=True), "linear biases"),
    (dict(add_qkv_bias=True), "q/k/v biases"),
    (dict(qk_layernorm=True), "q/k norms"),
    (dict(position_embedding_type="learned_absolute"), "rope"),
])
def test_non_llama_models_are_rejected(change, message):
    section = dataclasses.replace(LLAMA_SECTION, **change)
    with pytest.raises(ValueError, match=message):
        check_llama_compatible(builders.transformer_config(section),
                               builders.gpt_options(section, vocab_size=BYTE_VOCAB, seq_length=SEQ))
