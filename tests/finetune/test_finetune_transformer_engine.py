"""`nemo-mft finetune` with TransformerEngine's layer spec against the local spec (needs TE and a GPU: the
NGC NeMo container; skipped elsewhere, where `model.transformer_impl=auto` is the local spec).

Runs (subprocesses, one GPU each, fp32, TF32 off): full-weight MFT and LoRA MFT from the tiny HF chat model
with ``model.transformer_impl=local`` and ``=transformer_engine``; a TE run stopped at iteration 2 and
resumed under the local spec; a TE run from the checkpoint ``nemo-mft import`` wrote (local spec, on CPU).
The two specs compute the same model with different kernels, so losses agree to rounding (rel 2e-3), not
bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nemo_mft.training.metrics_log import read_records
from tiny_chat_model import write_tiny_chat_model

pytest.importorskip("transformer_engine", reason="needs TransformerEngine (the NGC NeMo container)")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TIMEOUT = 600
ITERS = 4
QA = [("What is the capital of France?", "Paris."), ("hello there, how are you today?", "Fine."),
      ("Name a primary colour.", "Blue."), ("What is two plus two?", "Four.")]


def _run(argv, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NVIDIA_TF32_OVERRIDE": "0", "CUDA_VISIBLE_DEVICES": "0"}
    proc = subprocess.run([sys.executable, "-m", "nemo_mft", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(log_dir):
    return {r["iteration"]: r["loss"] for r in read_records(os.path.join(log_dir, "metrics.jsonl")) if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("te")
    base = write_tiny_chat_model(str(root / "base"))
    data = root / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA * 2]
    (data / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))

    def finetune(name, impl, *extra, pretrained=base):
        _run(["finetune", "--config-name", "mft_hf", f"checkpoint.pretrained_checkpoint={pretrained}",
              f"dataset.dataset_root={data}", f"model.transformer_impl={impl}", "model.params_dtype=fp32",
              f"train.train_iters={ITERS}", "train.global_batch_size=2", "train.micro_batch_size=1",
              "dataset.seq_length=32", "scheduler.lr_warmup_iters=0", "optimizer.lr=0.01",
              "checkpoint.save_interval=2", f"checkpoint.save={root / name / 'ckpt'}",
              f"logger.log_dir={root / name / 'log'}", "logger.tensorboard=false", "logger.progress_bar=false",
              *extra], root)
        return _losses(root / name / "log")

    lora = ("peft.method=lora", "peft.dim=4", "peft.alpha=8")
    out = {"full": {impl: finetune(f"full_{impl}", impl) for impl in ("local", "transformer_engine")},
           "lora": {impl: finetune(f"lora_{impl}", impl, *lora) for impl in ("local", "transformer_engine")}}
    finetune("switch", "transformer_engine", "train.exit_interval=2")
    out["switch"] = finetune("switch", "local", f"checkpoint.load={root / 'switch' / 'ckpt'}")
    _run(["import", str(base), str(root / "imported")], root)
    out["imported"] = finetune("imported", "transformer_engine", pretrained=root / "imported")
    return out


def _assert_close(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for iteration in expected:
        assert actual[iteration] == pytest.approx(expected[iteration], rel=2e-3), iteration


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_transformer_engine_spec_trains_like_the_local_spec(runs, kind):
    local, te = runs[kind]["local"], runs[kind]["transformer_engine"]
    assert sorted(te) == list(range(1, ITERS + 1))
    assert len(set(te.values())) == ITERS, "the model trained: the loss moved"
    _assert_close(te, local)


def test_a_transformer_engine_checkpoint_resumes_under_the_local_spec(runs):
    _assert_close(runs["switch"], runs["full"]["transformer_engine"])


def test_an_imported_local_checkpoint_starts_a_transformer_engine_run(runs):
    _assert_close(runs["imported"], runs["full"]["transformer_engine"])
