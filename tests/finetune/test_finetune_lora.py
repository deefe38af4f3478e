"""`nemo-mft finetune` with `peft.method=lora` from an HF model directory (tests/tiny_chat_model.py), CPU.

Runs (subprocesses): A 4 MFT iterations, checkpoints every 2; B the same stopped after 2 then resumed;
C a resume of A's checkpoint onto another base model (refused). Checked: the checkpoints hold only the
adapters plus the record of the base they belong to, resume is exact, another base is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nemo_mft.training.metrics_log import read_records
from tiny_chat_model import write_tiny_chat_model

TIMEOUT = 300
QA = [("What is the capital of France?", "Paris."), ("hello there, how are you today?", "Fine.")]


def _write_data(root):
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA * 4]
    (root / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return root


def _run(argv, cwd, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "nemo_mft.finetune", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = write_tiny_chat_model(str(root / "base"))
    other = write_tiny_chat_model(str(root / "other"), noise=0.01)
    data = _write_data(root / "data")

    def recipe(name, *extra):
        return ["--config-name", "mft_hf", f"checkpoint.pretrained_checkpoint={base}", f"dataset.dataset_root={data}",
                "model.params_dtype=fp32", "peft.method=lora", "peft.dim=4", "peft.alpha=8", "train.train_iters=4",
                "train.global_batch_size=2", "train.micro_batch_size=1", "dataset.seq_length=32",
                "scheduler.lr_warmup_iters=0", "optimizer.lr=0.01", "checkpoint.save_interval=2",
                f"checkpoint.save={root / name / 'ckpt'}", f"logger.log_dir={root / name / 'log'}",
                "logger.tensorboard=false", "logger.progress_bar=false", *extra]

    _run(recipe("A"), root)
    _run(recipe("B", "train.exit_interval=2"), root)
    _run(recipe("B", f"checkpoint.load={root / 'B' / 'ckpt'}"), root)
    refused = _run([*recipe("C", f"checkpoint.load={root / 'A' / 'ckpt'}"),
                    f"checkpoint.pretrained_checkpoint={other}"], root, check=False)
    return {"root": root, "base": base, "refused": refused}


def _losses(log_dir):
    return {r["iteration"]: r["loss"] for r in read_records(os.path.join(log_dir, "metrics.jsonl")) if "loss" in r}


def test_checkpoints_hold_only_the_adapters_and_their_base(runs):
    from megatron.core import dist_checkpointing

    from nemo_mft.training.checkpointing import resolve_checkpoint

    ckpt = resolve_checkpoint(str(runs["root"] / "A" / "ckpt"))
    with open(os.path.join(ckpt, "metadata.json")) as handle:
        assert json.load(handle)["sharded_backend"] == "torch_dist"
    common = dist_checkpointing.load_common_state_dict(ckpt)
    assert common["peft"] == {"method": "lora", "dim": 4, "alpha": 8.0, "dropout": 0.0,
                              "target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]}
    assert common["base_model"]["path"] == os.path.abspath(runs["base"])
    assert len(common["base_model"]["content_sha256"]) == 64
    from nemo_mft.training.checkpointing import _stored_shapes

    keys = sorted(_stored_shapes(ckpt, weights_only=True))
    assert keys and all(k.endswith(("lora_a", "lora_b")) for k in keys), keys[:5]
    assert len(keys) == 2 * 4 * 2  # 2 layers x 4 targets x (A, B)


def test_resume_is_exact(runs):
    a, b = _losses(runs["root"] / "A" / "log"), _losses(runs["root"] / "B" / "log")
    assert sorted(a) == [1, 2, 3, 4] and a == b


def test_resume_onto_another_base_model_is_refused(runs):
    proc = runs["refused"]
    assert proc.returncode == 2
    assert "data.base_model (sha256)" in proc.stderr, proc.stderr[-2000:]
