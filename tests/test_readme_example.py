"""The README's "MFT in your own megatron-core loop" example runs as printed (in a fresh process)."""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## MFT in your own megatron-core loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_own_loop_example_trains_one_step(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_example())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loss_sum, count = ast.literal_eval(proc.stdout.strip().splitlines()[-1])  # "(sum, count)" as printed
    assert count == 64.0
    # MFT from identical teacher and student on random labels: the loss is the CE-sized correction term.
    assert math.isfinite(loss_sum) and loss_sum > 0


def _hf_example() -> str:
    text = README.read_text()
    section = text[text.index("## MFT in your own megatron-core loop"):text.index("## Finetune with a recipe")]
    return re.findall(r"```python\n(.*?)```", section, re.S)[1]


def test_hugging_face_fragment_imports_and_exports_a_checkpoint(tmp_path):
    """The README's nemo_mft.hf fragment, with the names it assumes defined around it: a tiny random Qwen2
    checkpoint goes in, and the export of the untrained student gives back its tensors exactly."""
    setup = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent / "hf")!r})
from hf_models import build_case
from nemo_mft.megatron import (build_model, init_distributed, initialize_parallel, megatron_on_cpu,
                               sync_teacher_from_student, unwrap)
hf_dir, out_dir = build_case("qwen2", {str(tmp_path / "in")!r}), {str(tmp_path / "out")!r}
cpu = megatron_on_cpu(); cpu.__enter__()
init_distributed()
layout = initialize_parallel(tp_size=1, pp_size=1, seed=0)
"""
    fragment = _hf_example().replace("# later, from a full (TP=1, PP=1) student state dict:",
                                     "state = unwrap(chunks[0]).student.state_dict()")
    check = """
from safetensors.torch import load_file
import glob, torch
def tensors(folder):
    out = {}
    for name in glob.glob(folder + "/*.safetensors"):
        out.update(load_file(name))
    return out
source, exported = tensors(hf_dir), tensors(out_dir)
assert source.keys() == exported.keys(), sorted(set(source) ^ set(exported))
assert all(torch.equal(source[k], exported[k]) for k in source)
print("round trip exact:", len(source), "tensors")
"""
    script = tmp_path / "hf_example.py"
    script.write_text(setup + fragment + check)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "round trip exact:" in proc.stdout
