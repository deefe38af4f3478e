"""`nemo-mft finetune --config-name mft_hf` on the real SmolLM2-135M-Instruct directory, chat data, CPU.

Two runs of the same recipe from the HF directory (nothing converted beforehand), 2 MFT iterations each: one
process (TP=1), and PP=2 under torchrun. Checked:

* the model came from config.json (the run's config.yaml has SmolLM2's 30 layers, GQA 9/3, tied embeddings)
  and the tokenizer, chat template and special tokens from the same directory;
* iteration 0's general-text perplexity equals transformers' on the same windows (float64 cross-entropy of
  LlamaForCausalLM's fp32 logits; rel 1e-5);
* both layouts log the same losses per iteration (rel 1e-5) and the same base perplexities;
* every checkpoint carries the base model's HF files (hf/config.json equal to the source's, tokenizer).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from test_smollm2_fixture import offline, smollm2_dir  # noqa: F401 (fixtures)

TIMEOUT = 600
SEQ, WINDOWS = 48, 4
QUESTIONS = [("What colour is the sky on a clear day?", "Blue."), ("How many legs does a spider have?", "Eight."),
             ("What is the capital of France?", "Paris."), ("What do bees make?", "Honey."),
             ("Which planet is known as the red planet?", "Mars."), ("What is frozen water called?", "Ice.")]
GENERAL = ("The history of bread begins with the first farmers, who ground grain between stones and baked the "
           "paste on hot rocks. Over thousands of years bakers learned to keep a piece of dough from one day to "
           "the next, and the yeast in it made the loaves rise.")


def _chat(question, answer):
    return {"messages": [{"role": "system", "content": "Answer in one word."},
                         {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2_data")
    for name, rows in (("training.jsonl", QUESTIONS), ("validation.jsonl", QUESTIONS[:2])):
        (root / name).write_text("".join(json.dumps(_chat(q, a)) + "\n" for q, a in rows))
    general = root / "general.jsonl"
    general.write_text(json.dumps({"text": GENERAL}) + "\n" + json.dumps({"text": GENERAL.upper()}) + "\n")
    return root, general


def _command(nproc):
    if nproc == 1:
        return [sys.executable, "-m", "nemo_mft.finetune"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "nemo_mft.finetune"]


@pytest.fixture(scope="module")
def runs(smollm2_dir, data, tmp_path_factory):  # noqa: F811
    root, general = data
    out = tmp_path_factory.mktemp("smollm2_runs")
    layouts = {"tp1": (1, 1), "pp2": (2, 2)}
    procs = {}
    for name, (nproc, pp) in layouts.items():
        argv = ["--config-name", "mft_hf", f"checkpoint.pretrained_checkpoint={smollm2_dir}",
                f"dataset.dataset_root={root}", f"evaluation.general_data={general}", "model.params_dtype=fp32",
                f"model.pipeline_model_parallel_size={pp}", "train.train_iters=2", "train.global_batch_size=2",
                "train.micro_batch_size=1", f"dataset.seq_length={SEQ}", f"evaluation.max_eval_windows={WINDOWS}",
                "scheduler.lr_warmup_iters=0", f"checkpoint.save={out / name / 'ckpt'}",
                f"logger.log_dir={out / name / 'log'}", "logger.tensorboard=false", "logger.progress_bar=false"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        procs[name] = subprocess.Popen(_command(nproc) + argv, cwd=out, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    results = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{name} failed:\n{output[-4000:]}"
        log = out / name / "log"
        records = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
        results[name] = {"log": log, "ckpt": out / name / "ckpt", "records": records,
                         "summary": json.loads((log / "summary.json").read_text())}
    return results


def test_the_model_and_tokenizer_came_from_the_directory(runs, smollm2_dir):  # noqa: F811
    import yaml

    config = yaml.safe_load((runs["tp1"]["log"] / "config.yaml").read_text())
    model = config["model"]
    assert (model["num_layers"], model["hidden_size"], model["num_attention_heads"], model["num_query_groups"],
            model["ffn_hidden_size"], model["vocab_size"]) == (30, 576, 9, 3, 1536, 49152)
    assert model["share_embeddings_and_output_weights"] and model["normalization"] == "RMSNorm"
    assert config["tokenizer"] == {"type": "huggingface", "path": str(smollm2_dir)}


def test_base_perplexity_equals_transformers(runs, smollm2_dir, data, offline):  # noqa: F811
    from transformers import LlamaForCausalLM

    from nemo_mft.data import HuggingFaceTokenizer, build_text_eval_dataset

    _, general = data
    windows = build_text_eval_dataset(str(general), HuggingFaceTokenizer(str(smollm2_dir)), SEQ, max_windows=WINDOWS)
    model = LlamaForCausalLM.from_pretrained(smollm2_dir, local_files_only=True, dtype=torch.float32,
                                             attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(windows.tokens).logits.double()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows.labels.flatten(), reduction="none")
    mask = windows.loss_mask.flatten().double()
    expected = math.exp(float((nll * mask).sum() / mask.sum()))
    for name in ("tp1", "pp2"):
        got = runs[name]["summary"]["base"]["gen_ppl"]
        assert got == pytest.approx(expected, rel=1e-5), (name, got, expected)


def test_layouts_agree_and_training_moved(runs):
    def losses(name):
        return [r["loss"] for r in runs[name]["records"] if "loss" in r and r.get("kind", "train") == "train"]

    tp1, pp2 = losses("tp1"), losses("pp2")
    assert len(tp1) == 2 and all(math.isfinite(v) for v in tp1)
    assert pp2 == pytest.approx(tp1, rel=1e-5)
    assert runs["pp2"]["summary"]["base"]["spec_ppl"] == pytest.approx(runs["tp1"]["summary"]["base"]["spec_ppl"],
                                                                       rel=1e-5)
    assert runs["tp1"]["summary"]["final"]["spec_ppl"] != runs["tp1"]["summary"]["base"]["spec_ppl"]


def test_checkpoints_carry_the_base_models_files(runs, smollm2_dir):  # noqa: F811
    from nemo_mft.training.checkpointing import resolve_checkpoint

    for name in ("tp1", "pp2"):
        ckpt = resolve_checkpoint(str(runs[name]["ckpt"]))
        hf = os.path.join(ckpt, "hf")
        with open(os.path.join(hf, "config.json")) as a, open(os.path.join(smollm2_dir, "config.json")) as b:
            assert json.load(a) == json.load(b)
        assert os.path.isfile(os.path.join(hf, "tokenizer.json"))
        manifest = json.loads(open(os.path.join(ckpt, "nemo_mft_manifest.json")).read())
        assert "hf/config.json" in manifest["files"] and "hf/tokenizer.json" in manifest["files"]


def test_bos_is_added_as_transformers_adds_it(smollm2_dir, offline):  # noqa: F811
    from transformers import AutoTokenizer

    from nemo_mft.data import HuggingFaceTokenizer

    ours = HuggingFaceTokenizer(str(smollm2_dir))
    theirs = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    assert ours.bos_id == theirs.bos_token_id
    assert ours.adds_bos == (theirs("Hello").input_ids[0] == theirs.bos_token_id)  # both False for SmolLM2


def test_chat_masks_follow_the_assistant_turn_rule(smollm2_dir, offline, tmp_path):  # noqa: F811
    """SmolLM2's own template (a default system prompt when none is given): the loss covers exactly the tokens
    render(messages[:k+1]) adds beyond render(messages[:k], add_generation_prompt=True), per transformers."""
    from transformers import AutoTokenizer

    from nemo_mft.data import HuggingFaceTokenizer, build_sft_dataset

    reference = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)

    def render(messages, prompt=False):
        return list(reference.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True,
                                                  return_dict=False))

    conversations = [
        [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."},
         {"role": "user", "content": "And an even one?"}, {"role": "assistant", "content": "Two."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}],
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    seq_length = 96
    dataset = build_sft_dataset(str(path), HuggingFaceTokenizer(str(smollm2_dir)), seq_length)
    for row, messages in enumerate(conversations):
        full = render(messages)
        positions = set()
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                start, end = len(render(messages[:k], prompt=True)), len(render(messages[:k + 1]))
                positions |= {j - 1 for j in range(start, end)}
        n = len(full) - 1
        assert dataset.tokens[row, :n].tolist() == full[:n]
        assert {i for i in range(seq_length) if dataset.loss_mask[row, i]} == positions
