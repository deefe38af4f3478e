"""nemo_mft.bridge is optional: the package and its CLI never import Megatron-Bridge, and without Bridge
``import nemo_mft.bridge`` fails with an ImportError that says how to install it.

Runs in the plain venv (tests/bridge/ runs in .venv-bridge). Each check runs in a fresh interpreter; Bridge is
hidden there by a meta-path finder, so the result does not depend on what this venv happens to hold.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_HIDE_BRIDGE = """
import importlib.abc, sys
class _HideBridge(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "megatron.bridge" or name.startswith("megatron.bridge."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None
sys.meta_path.insert(0, _HideBridge())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_package_and_cli_never_import_bridge():
    code = ("import sys\nimport nemo_mft, nemo_mft.finetune.cli, nemo_mft.config.schema, nemo_mft.megatron\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('megatron.bridge', 'nemo_mft.bridge')))\n"
            "print('IMPORTED', bad)\nassert not bad, bad\n")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IMPORTED []" in result.stdout


def test_import_without_bridge_names_the_install():
    code = _HIDE_BRIDGE + (
        "try:\n    import nemo_mft.bridge\nexcept ImportError as err:\n    print('ERROR', err)\n"
        "else:\n    raise SystemExit('nemo_mft.bridge imported without Megatron-Bridge')\n")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install --no-deps megatron-bridge==0.3.1" in result.stdout
    assert "requirements/bridge.txt" in result.stdout and "requirements/bridge-nodeps.txt" in result.stdout
