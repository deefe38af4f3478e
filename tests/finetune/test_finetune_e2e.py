"""`nemo-mft finetune` end to end on conf/mft_tiny.yaml (CPU, gloo): one process, TP=2 and PP=2 under torchrun,
kill-and-resume, and a checkpoint of one run initializing the next.

Runs (subprocesses, about 8 s of imports each, so they are few and run two at a time):
  A  uninterrupted: 4 iterations, checkpoints every 2 (keep_last=1), via the `nemo-mft` console script,
     with general-text replay and L2-to-init on top of MFT
  B  the same recipe stopped after iteration 2 (train.exit_interval), then resumed with checkpoint.load
  C  TP=1, D  TP=2, E  PP=2, F  DP=2 (D, E, F under torchrun): 2 iterations each from A's checkpoint
  H  a Llama-shaped tiny model (RMSNorm, SwiGLU, GQA, no biases) trained at TP=2, then `nemo-mft export`
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from nemo_mft.training.metrics_log import read_records
from recipe_data import write_qa_data

BIN = os.path.dirname(sys.executable)
TIMEOUT = 300


def _data(root):
    write_qa_data(root)
    general = root / "general.jsonl"
    general.write_text("".join(json.dumps({"text": f"The quick brown fox number {i} jumps over the lazy dog."}) + "\n"
                               for i in range(8)))
    return root, general


def _start(argv, cwd, nproc=1, console_script=False):
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "nemo_mft.finetune"]
    elif console_script:
        cmd = [os.path.join(BIN, "nemo-mft"), "finetune"]
    else:
        cmd = [sys.executable, "-m", "nemo_mft.finetune"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd + argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait(*procs):
    for proc in procs:
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{' '.join(proc.args)}\nexit {proc.returncode}\n{out[-6000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    data, general = _data(root / "data")
    recipe = ["--config-name", "mft_tiny", f"dataset.dataset_root={data}", f"evaluation.general_data={general}",
              "dataset.seq_length=32", "train.global_batch_size=4", "train.micro_batch_size=2",
              "evaluation.max_eval_windows=4", "scheduler.lr_warmup_iters=1"]
    # A and B also carry the replay and L2-to-init baselines, so the exact-resume check covers their state
    # (theta_0 must stay the pretrained weights, not the resumed ones).
    four = recipe + ["train.train_iters=4", "checkpoint.save_interval=2", "evaluation.eval_interval=2",
                     f"dataset.replay_data={general}", "dataset.replay_fraction=0.25", "mft.l2_init_weight=0.5"]
    a = four + [f"logger.log_dir={root}/A", f"checkpoint.save={root}/A/ckpt", "checkpoint.keep_last=1"]
    b = four + [f"logger.log_dir={root}/B", f"checkpoint.save={root}/B/ckpt", "logger.progress_bar=false"]
    _wait(_start(a, root, console_script=True), _start(b + ["train.exit_interval=2"], root))
    stopped = read_records(str(root / "B" / "metrics.jsonl"))

    two = recipe + ["train.train_iters=2", f"checkpoint.pretrained_checkpoint={root}/A/ckpt",
                    "logger.progress_bar=false"]
    _wait(_start(b + [f"checkpoint.load={root}/B/ckpt"], root),
          _start(two + [f"logger.log_dir={root}/C"], root))
    _wait(_start(two + [f"logger.log_dir={root}/D", "model.tensor_model_parallel_size=2"], root, nproc=2),
          _start(two + [f"logger.log_dir={root}/E", "model.pipeline_model_parallel_size=2"], root, nproc=2))
    llama = recipe + ["train.train_iters=2", "logger.progress_bar=false", "model.normalization=RMSNorm",
                      "model.activation=swiglu", "model.add_bias_linear=false", "model.num_query_groups=2",
                      "model.tensor_model_parallel_size=2", f"logger.log_dir={root}/H", f"checkpoint.save={root}/H/ckpt"]
    _wait(_start(two + [f"logger.log_dir={root}/F"], root, nproc=2), _start(llama, root, nproc=2))
    _wait(subprocess.Popen([os.path.join(BIN, "nemo-mft"), "export", "--run-config", f"{root}/H/config.yaml",
                            "--checkpoint", f"{root}/H/ckpt", "--out", f"{root}/H/hf", "--dtype", "float32"],
                           cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    yield root, stopped
    shutil.rmtree(root, ignore_errors=True)


def _train(path):
    return [r for r in read_records(str(path)) if "loss" in r]


def _evals(path):
    return [r for r in read_records(str(path)) if "spec_ppl" in r]


def test_a_run_writes_its_record(runs):
    root, _ = runs
    run = root / "A"
    assert {"config.yaml", "metrics.jsonl", "summary.json", "curves.png", "tensorboard", "ckpt"} <= set(os.listdir(run))
    assert os.listdir(run / "tensorboard")
    assert "method: mft" in (run / "config.yaml").read_text()
    train = _train(run / "metrics.jsonl")
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    for key in ("loss", "lr", "tokens_per_s", "student_ce", "teacher_acc", "mixing_weight", "grad_norm"):
        assert all(isinstance(r[key], float) for r in train), key
    evals = _evals(run / "metrics.jsonl")
    assert [r["iteration"] for r in evals] == [0, 2, 4]
    assert set(evals[-1]) == {"iteration", "spec_ppl", "gen_ppl", "S", "DG", "DG_over_S"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "mft" and summary["iterations"] == 4 and summary["train_time_s"] > 0
    # The data accounting: in the summary, and as one metrics record at the start.
    assert set(summary["data"]) == {"train", "replay", "validation", "general"}
    assert summary["data"]["train"]["rows_read"] == summary["data"]["train"]["rows_kept"] == 24
    assert summary["data"]["train"]["truncated"] == 24  # seq_length 32 cuts every row of this data
    assert [r["data"] for r in read_records(str(run / "metrics.jsonl")) if "data" in r] == [summary["data"]]
    assert summary["base"] == {"spec_ppl": evals[0]["spec_ppl"], "gen_ppl": evals[0]["gen_ppl"]}
    assert summary["final"] == {k: evals[-1][k] for k in ("spec_ppl", "gen_ppl", "S", "DG", "DG_over_S")}
    assert summary["final"]["S"] == pytest.approx(evals[0]["spec_ppl"] - evals[-1]["spec_ppl"])
    # Checkpoints: every 2 iterations, only the last kept, tracker and run marker beside them.
    ckpt = run / "ckpt"
    assert summary["checkpoint"] == str(ckpt / "iter_0000004")
    assert sorted(os.listdir(ckpt)) == [".nemo_mft.lock", "iter_0000004", "latest_checkpointed_iteration.txt",
                                        "nemo_mft_run.json"]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"


def test_resumed_run_equals_the_uninterrupted_one(runs):
    root, stopped = runs
    assert [r["iteration"] for r in stopped if "loss" in r] == [1, 2]  # B really stopped at 2
    a, b = _train(root / "A" / "metrics.jsonl"), _train(root / "B" / "metrics.jsonl")
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "student_ce", "teacher_acc", "mixing_weight", "grad_norm", "lr"):
        assert [r[key] for r in b] == [r[key] for r in a], key  # exactly equal, not approximately
    assert _evals(root / "B" / "metrics.jsonl") == _evals(root / "A" / "metrics.jsonl")
    marker = json.loads((root / "B" / "ckpt" / "nemo_mft_run.json").read_text())
    assert marker["resumes"][0]["from"].endswith("iter_0000002")
    assert json.loads((root / "B" / "summary.json").read_text())["final"] == \
        json.loads((root / "A" / "summary.json").read_text())["final"]


def test_a_checkpoint_initializes_the_next_run_in_any_layout(runs):
    root, _ = runs
    final_a = _evals(root / "A" / "metrics.jsonl")[-1]
    losses = {}
    for name in ("C", "D", "E", "F"):
        base = _evals(root / name / "metrics.jsonl")[0]
        # Student (and teacher) start from A's final weights: the base perplexity is A's final one.
        assert base["spec_ppl"] == pytest.approx(final_a["spec_ppl"], rel=1e-5), name
        assert base["gen_ppl"] == pytest.approx(final_a["gen_ppl"], rel=1e-5), name
        losses[name] = [r["loss"] for r in _train(root / name / "metrics.jsonl")]
        assert len(losses[name]) == 2
    assert losses["D"] == pytest.approx(losses["C"], rel=1e-5)  # TP=2 vs TP=1
    assert losses["E"] == pytest.approx(losses["C"], rel=1e-5)  # PP=2 vs TP=1
    assert losses["F"] == pytest.approx(losses["C"], rel=1e-5)  # DP=2 (megatron DDP) vs one process
    config = (root / "D" / "config.yaml").read_text()
    assert "tensor_model_parallel_size: 2" in config


def test_refuses_another_runs_checkpoint_directory(runs, capsys):
    from nemo_mft.finetune.cli import finetune_main

    root, _ = runs
    with pytest.raises(SystemExit) as exit_info:
        finetune_main(["--config-name", "mft_tiny", f"dataset.dataset_root={root}/data",
                       f"logger.log_dir={root}/G", f"checkpoint.save={root}/A/ckpt"])
    assert exit_info.value.code == 2
    assert "already holds checkpoints (iterations [4])" in capsys.readouterr().err
    assert not (root / "G").exists()


def test_exported_checkpoint_reproduces_the_runs_own_perplexity(runs):
    """TP=2 checkpoint -> `nemo-mft export` -> transformers' LlamaForCausalLM (an independent Llama) scores
    the run's validation set with the perplexity the run itself reported at its last evaluation."""
    import torch
    from transformers import LlamaForCausalLM

    from nemo_mft.finetune.export_command import load_run_config
    from nemo_mft.training.inputs import load_run_data

    root, _ = runs
    assert {"config.json", "model.safetensors"} <= set(os.listdir(root / "H" / "hf"))
    data = load_run_data(load_run_config(str(root / "H" / "config.yaml")))
    model = LlamaForCausalLM.from_pretrained(str(root / "H" / "hf"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=data.validation.tokens).logits[..., :data.tokenizer.vocab_size].double()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), data.validation.labels, reduction="none")
    mask = data.validation.loss_mask.double()
    ppl = float(torch.exp((nll * mask).sum() / mask.sum()))
    reported = json.loads((root / "H" / "summary.json").read_text())["final"]["spec_ppl"]
    assert ppl == pytest.approx(reported, rel=1e-4)


def test_export_refuses_a_model_that_is_not_llama_shaped(runs, capsys):
    from nemo_mft.finetune.export_command import export_main

    root, _ = runs
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--run-config", f"{root}/A/config.yaml", "--checkpoint", f"{root}/A/ckpt", "--out", f"{root}/X"])
    assert exit_info.value.code == 2
    assert "cannot be exported as a Hugging Face Llama" in capsys.readouterr().err
    assert not (root / "X").exists()
