"""``import nemo_mft.bridge`` where Megatron-Bridge is installed but TransformerEngine is not (a CPU machine
without the test-only stand-in): an ImportError that names TransformerEngine, not a bare ModuleNotFoundError
from inside Bridge. A fresh interpreter of this venv, without the stand-in on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_without_transformer_engine_names_it():
    code = ("try:\n    import nemo_mft.bridge\nexcept ImportError as err:\n"
            "    print(type(err).__name__, '|', err)\nelse:\n    raise SystemExit('imported without TE')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's nemo_mft, and no tests/bridge (the stand-in's directory)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("ImportError |") and "TransformerEngine" in line and "transformer_engine" in line, line
