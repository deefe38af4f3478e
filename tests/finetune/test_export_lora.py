"""``nemo-mft export`` of a ``peft.method=lora`` checkpoint: the PEFT adapter (``--adapter``) and the merged model.

A LoRA run of 2 iterations at a high learning rate on tests/tiny_chat_model.py (a subprocess, as
test_finetune_lora.py), then one spawned job (export_lora_job.py) exports it and computes our own LoRA logits.
Checked: the adapter directory is exactly PEFT's two files; ``peft.PeftModel`` on transformers' base model gives
our LoRA model's logits (fp32, rel 1e-5), which differ clearly from the base's; the merged export gives the
same logits with plain transformers; a moved base is taken with ``--base`` (same content), other weights and
the options on a checkpoint of full weights are one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tiny_chat_model import write_tiny_chat_model

TIMEOUT = 300
QA = [("What is the capital of France?", "Paris."), ("hello there, how are you today?", "Fine.")]
PEFT_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _write_data(root):
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA * 4]
    (root / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("peft")
    from dist_utils import run_distributed
    from export_lora_job import run

    root = tmp_path_factory.mktemp("export_lora")
    base = write_tiny_chat_model(str(root / "base"))
    data = _write_data(root / "data")
    ckpt = root / "run" / "ckpt"
    argv = ["--config-name", "mft_hf", f"checkpoint.pretrained_checkpoint={base}", f"dataset.dataset_root={data}",
            "model.params_dtype=fp32", "peft.method=lora", "peft.dim=4", "peft.alpha=8", "train.train_iters=2",
            "train.global_batch_size=2", "train.micro_batch_size=1", "dataset.seq_length=32",
            "scheduler.lr_warmup_iters=0", "optimizer.lr=0.05", "checkpoint.save_interval=2", f"checkpoint.save={ckpt}",
            f"logger.log_dir={root / 'run' / 'log'}", "logger.tensorboard=false", "logger.progress_bar=false"]
    proc = subprocess.run([sys.executable, "-m", "nemo_mft.finetune", *argv], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    moved = shutil.copytree(base, root / "moved_base")
    tokens = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = run_distributed(run, 1, str(ckpt), base, str(moved), str(root), tokens)
    return {"root": root, "base": base, "moved": str(moved), "ckpt": str(ckpt), "tokens": tokens, **ours}


def _transformers(directory):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager").eval()


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_adapter_directory_holds_exactly_peft_files(exported):
    from safetensors.torch import load_file

    for name, dtype, base in (("adapter", torch.float32, exported["base"]), ("adapter_bf16", torch.bfloat16,
                                                                            exported["moved"])):
        directory = exported["root"] / name
        assert sorted(os.listdir(directory)) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads((directory / "adapter_config.json").read_text())
        assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == ("LORA", "CAUSAL_LM",
                                                                                                4, 8)
        assert config["target_modules"] == PEFT_MODULES and config["base_model_name_or_path"] == os.path.abspath(base)
        tensors = load_file(str(directory / "adapter_model.safetensors"))
        assert len(tensors) == 2 * len(PEFT_MODULES) * 2 and all(t.dtype == dtype for t in tensors.values())
        assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (16, 4)
        assert tensors["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"].shape == (4, 32)


def test_peft_on_transformers_gives_our_lora_logits(exported):
    from peft import PeftModel

    # The run moved every adapter: B started at zero.
    assert len(exported["b_norms"]) == 2 * 4 and min(exported["b_norms"].values()) > 1e-3
    tokens = exported["tokens"]
    base = _transformers(exported["base"])
    _close(_logits(base, tokens), exported["off"])  # our model with the adapters off is the base
    peft_model = PeftModel.from_pretrained(base, str(exported["root"] / "adapter")).eval()
    with_adapter = _logits(peft_model, tokens)
    _close(with_adapter, exported["on"])
    assert (exported["on"] - exported["off"]).abs().max() > 0.05  # the adapters change the logits clearly


def test_merged_export_gives_the_adapter_on_logits(exported):
    root = exported["root"]
    assert sorted(os.listdir(root / "merged")) == sorted(os.listdir(exported["base"]))  # what a full export writes
    assert json.loads((root / "merged" / "config.json").read_text()) == json.loads(
        open(os.path.join(exported["base"], "config.json")).read())
    _close(_logits(_transformers(root / "merged"), exported["tokens"]), exported["on"])


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


ERRORS = {
    "adapter_on_full_weights": (["--checkpoint", "{full}", "--adapter"],
                                "--adapter applies only to a checkpoint of a run with peft.method=lora"),
    "base_on_full_weights": (["--checkpoint", "{full}", "--base", "{base}"],
                             "--base applies only to a checkpoint of a run with peft.method=lora"),
    "other_base_weights": (["--checkpoint", "{ckpt}", "--adapter", "--base", "{tmp}/other"],
                           "the base model at {tmp}/other is not the one the adapters of"),
    "missing_base": (["--checkpoint", "{ckpt}", "--base", "{tmp}/none"],
                     "the base model {tmp}/none of the LoRA checkpoint {ckpt}/iter_0000002 is not a directory"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_lora_export_errors_are_one_line(case, exported, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    other = shutil.copytree(exported["base"], tmp_path / "other")  # same files, other weights
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v + 0.01 for k, v in weights.items()}, str(other / "model.safetensors"), metadata={"format": "pt"})
    fill = {"tmp": str(tmp_path), "full": str(exported["root"] / "full"), "base": exported["base"],
            "ckpt": exported["ckpt"]}
    args, message = ERRORS[case]
    code, line = _fail(["export", *(a.format(**fill) for a in args), "--out", f"{tmp_path}/out"], capsys, monkeypatch)
    assert code == 2 and line.startswith("nemo-mft export: error: ")
    assert message.format(**fill) in line
    assert not (tmp_path / "out").exists()
