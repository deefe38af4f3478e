"""Run the Triton kernel cases on CPU under Triton's interpreter, in a subprocess.

TRITON_INTERPRET=1 only takes effect if it is set before the kernels are defined (`triton.jit` reads it
at decoration time), and it must not leak into the rest of the suite (which, on a GPU machine, runs the
same cases compiled: `test_kernels_gpu.py`). A fresh interpreter with the variable set guarantees both,
whatever was imported before in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
numpy = pytest.importorskip("numpy")


def _version(module) -> tuple[int, int]:
    return tuple(int(part) for part in module.__version__.split(".")[:2])


# Triton < 3.7's interpreter converts scalar kernel arguments with int() on 1-element arrays, which
# numpy >= 2.4 rejects ("only 0-dimensional arrays can be converted"); compiled kernels are unaffected.
pytestmark = pytest.mark.skipif(
    _version(triton) < (3, 7) and _version(numpy) >= (2, 4),
    reason=f"Triton {triton.__version__}'s interpreter is broken with numpy {numpy.__version__}",
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_kernel_cases_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
        str(HERE / "kernel_cases.py"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"interpreter run failed ({' '.join(cmd)}):\n{output[-12000:]}"
    summary = output.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, output[-4000:]
