"""tests/bridge runs against the real Megatron-Bridge 0.3.1, in its own virtualenv (.venv-bridge).

Build it and run these tests with::

    make venv-bridge
    .venv-bridge/bin/python -m pytest -q -p no:cacheprovider tests/bridge

(``make test`` does both). Under any other interpreter collection fails loudly here rather than skipping: in
.venv-bridge every test of this folder must run. The TEST-ONLY TransformerEngine stand-in is installed in this
process and in every spawned rank by ``cpu_bridge.install_stand_ins()`` (see ``tests/bridge/cpu_bridge.py``).
"""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
# Spawned ranks import the harness modules by name too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH")) if p)

_BUILD = ("tests/bridge needs Megatron-Bridge 0.3.1 and its virtualenv: run `make venv-bridge`, then "
          "`.venv-bridge/bin/python -m pytest -q -p no:cacheprovider tests/bridge` (or `make test`)")


def _install() -> None:
    try:
        import megatron.core  # noqa: F401
        import transformers
    except ImportError as exc:
        raise pytest.UsageError(f"{_BUILD}\n(import failed: {exc!r}; interpreter {sys.executable})") from exc
    if int(transformers.__version__.split(".")[0]) >= 5:
        raise pytest.UsageError(f"{_BUILD}\n(this interpreter, {sys.executable}, has transformers "
                                f"{transformers.__version__}; Bridge 0.3.1 needs < 5)")
    import cpu_bridge

    try:
        cpu_bridge.install_stand_ins()
    except ImportError as exc:
        raise pytest.UsageError(f"{_BUILD}\n(import megatron.bridge failed: {exc!r}; interpreter "
                                f"{sys.executable})") from exc


_install()
