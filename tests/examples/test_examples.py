"""The folders of examples/: each has a README.md and an executable run.sh, and the SmolLM2 chat example's smoke run
(`examples/smollm2_chat_mft/run.sh --smoke`: FT and MFT of the real SmolLM2-135M-Instruct on CPU, 2 iterations
each) prints the base / FT / MFT table with finite numbers, exports the MFT checkpoint and generates from the export
with transformers (`nemo-mft export --checkpoint CK --out DIR`: the base model's family from the checkpoint's hf/).

The SmolLM2 directory is the project's fixture (tests/fixtures/smollm2.py; `make test` builds it first). A missing or
damaged fixture is an error with the command that builds it, unless NEMO_MFT_SMOLLM2_OPTIONAL=1 is set, which turns
an absent fixture into a skip (as in tests/hf/test_smollm2_fixture.py)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import smollm2

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SMOLLM2_EXAMPLE = EXAMPLES / "smollm2_chat_mft"
OPTIONAL_ENV = smollm2.OPTIONAL_ENV
TIMEOUT = 1200  # the smoke run takes 2-3 min on 2 idle cores; generous for a loaded machine
ROW = re.compile(r"^\| (base|FT|MFT) \|(.*)\|\s*$")


def _example_dirs() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def test_there_are_examples():
    assert SMOLLM2_EXAMPLE in _example_dirs()


@pytest.mark.parametrize("example", _example_dirs(), ids=lambda p: p.name)
def test_every_example_has_a_readme_and_an_executable_run_sh(example):
    readme, run = example / "README.md", example / "run.sh"
    assert readme.is_file() and readme.read_text().strip(), f"{example.name}: README.md missing or empty"
    assert run.is_file(), f"{example.name}: run.sh missing"
    assert os.access(run, os.X_OK), f"{example.name}: run.sh is not executable"
    text = run.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_make_data_holds_out_fact_wording_pairs(tmp_path):
    script = SMOLLM2_EXAMPLE / "make_data.py"
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(script), str(tmp_path / out), "--train", "300"], check=True,
                       capture_output=True, text=True)
    for name in ("training.jsonl", "validation.jsonl", "general.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), f"{name} not seeded"
    train, validation = _load(tmp_path / "a" / "training.jsonl"), _load(tmp_path / "a" / "validation.jsonl")
    assert len(train) == 300 and len(validation) == 64
    for row in train + validation:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    questions = {row["messages"][1]["content"] for row in train}
    answers = {row["messages"][2]["content"] for row in train}
    for row in validation:
        # A held-out wording of a fact that training states.
        assert row["messages"][1]["content"] not in questions
        assert row["messages"][2]["content"] in answers
    general = _load(tmp_path / "a" / "general.jsonl")
    assert 15 <= len(general) <= 25 and all(set(r) == {"text"} and len(r["text"]) > 200 for r in general)
    assert len({r["text"] for r in general}) == len(general)


def test_run_sh_refuses_a_work_directory_with_results(tmp_path):
    (tmp_path / "old_results.txt").write_text("keep me")
    proc = subprocess.run([str(SMOLLM2_EXAMPLE / "run.sh"), "--smoke", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not an empty directory" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old_results.txt"]


@pytest.fixture(scope="module")
def smollm2_dir():
    return smollm2.directory_for_tests()


def _smoke_run(example: Path, work_env: str, model_dir: Path, work: Path):
    env = {**os.environ, work_env: str(work), "MODEL_DIR": str(model_dir), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([str(example / "run.sh"), "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    return proc, work


@pytest.fixture(scope="module")
def smoke(smollm2_dir, tmp_path_factory):
    return _smoke_run(SMOLLM2_EXAMPLE, "MFT_EXAMPLE_WORK", smollm2_dir,
                      tmp_path_factory.mktemp("smollm2_example") / "work")


def _table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_smoke_run_prints_the_table(smoke):
    proc, work = smoke
    assert proc.returncode == 0, f"run.sh --smoke failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    rows = _table(proc.stdout)
    assert set(rows) == {"base", "FT", "MFT"}, proc.stdout[-4000:]
    assert all(math.isfinite(float(v)) for v in rows["base"][:2]) and rows["base"][2:] == ["-", "-", "-"]
    for name in ("FT", "MFT"):
        assert len(rows[name]) == 5 and all(math.isfinite(float(v)) for v in rows[name]), rows[name]
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary) >= {"base", "ft", "mft"}
    for method in ("ft", "mft"):
        assert summary[method]["iterations"] == 2
        assert (work / method / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    # Every run evaluated the same frozen base model on the same sets.
    assert summary["base_check"]["max_abs_difference_between_runs"] < 1e-6 * summary["base"]["gen_ppl"]


def test_smoke_run_exports_and_generates(smoke, smollm2_dir):
    proc, work = smoke
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The export is the base model's family (SmolLM2: Llama) with its config, tokenizer and chat template.
    export = work / "export_mft"
    source = json.loads((smollm2_dir / "config.json").read_text())
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == source["architectures"] and config["num_hidden_layers"] == 30
    assert (export / "tokenizer.json").is_file() and (export / "chat_template.jinja").is_file()
    out = proc.stdout
    assert "== generation from the MFT export (LlamaForCausalLM" in out
    answers = re.findall(r"^\[(domain \(held out\)|general)\] A: (.*)$", out, flags=re.M)
    assert [kind for kind, _ in answers] == ["domain (held out)", "general"]
    assert all(text.strip() for _, text in answers), answers


LORA_EXAMPLE = EXAMPLES / "smollm2_lora_mft"


@pytest.fixture(scope="module")
def lora_smoke(smollm2_dir, tmp_path_factory):
    return _smoke_run(LORA_EXAMPLE, "LORA_EXAMPLE_WORK", smollm2_dir,
                      tmp_path_factory.mktemp("smollm2_lora_example") / "work")


def test_lora_smoke_run_exports_an_adapter_that_peft_loads(lora_smoke, smollm2_dir):
    """`examples/smollm2_lora_mft/run.sh --smoke`: LoRA-FT and LoRA-MFT table, the MFT adapter exported in
    HF-PEFT form (exactly the two files NIM reads) and generation through peft from the base + adapter."""
    proc, work = lora_smoke
    assert proc.returncode == 0, f"run.sh --smoke failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    rows = _table(proc.stdout)
    assert set(rows) == {"base", "FT", "MFT"} and all(math.isfinite(float(v)) for v in rows["MFT"]), proc.stdout[-3000:]
    adapter = work / "adapter_mft"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    assert config["base_model_name_or_path"] == str(smollm2_dir)
    assert "== generation from the base + the LoRA-MFT adapter (peft) (PeftModel" in proc.stdout
    answers = re.findall(r"^\[(domain \(held out\)|general)\] A: (.*)$", proc.stdout, flags=re.M)
    assert [kind for kind, _ in answers] == ["domain (held out)", "general"] and all(t.strip() for _, t in answers)
