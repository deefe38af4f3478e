"""The package's layers import one way only (read from the source with `ast`, nothing is imported).

    finetune, demo  ->  training  ->  bridge (optional)  ->  config  ->  export  ->  hf  ->  megatron  ->  data  ->  methods  ->  kernels  ->  loss

A layer may import the layers to its right, never one to its left; `nemo_mft/__init__.py` (the
composition root that registers the Triton backend), `nemo_mft/__main__.py` (the command line as a module) and the
top-level modules are exempt only as noted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nemo_mft"
# Lower index = lower layer. A module of layer i may import layers with an index <= i.
LAYERS = ["loss", "kernels", "methods", "data", "megatron", "peft", "hf", "export", "config", "bridge", "training",
          "finetune", "demo"]
# data (readers, tokenizers) is independent of the model stack below it: it imports none of it.
FORBIDDEN_EXTRA = {"data": {"loss", "kernels", "methods", "megatron", "hf", "export", "config"}}


def _layer(module_path: Path) -> str:
    relative = module_path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; the layering test reads absolute imports only")
        for name in names:
            parts = name.split(".")
            if parts[0] == "nemo_mft" and len(parts) > 1:
                found.add(parts[1])
    return found


# Exempt: the package's __init__.py and __main__.py (`python -m nemo_mft COMMAND`, the console script's entry).
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py") or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_only(path):
    layer = _layer(path)
    assert layer in LAYERS, f"{path}: not in the layer table of this test; add it"
    rank = LAYERS.index(layer)
    upward = {other for other in _imported_layers(path) if other in LAYERS and LAYERS.index(other) > rank}
    assert not upward, f"{path.relative_to(PACKAGE)} ({layer}) imports the higher layer(s) {sorted(upward)}"
    extra = _imported_layers(path) & FORBIDDEN_EXTRA.get(layer, set())
    assert not extra, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(extra)}"


def test_the_issue_rules_hold():
    """No module of loss, kernels, megatron or export imports config, training, finetune or demo, and the
    loss never imports the kernels (they register themselves through the package root)."""
    for path in MODULES:
        layer = _layer(path)
        imported = _imported_layers(path)
        if layer in ("loss", "kernels", "megatron", "hf", "export"):
            assert not imported & {"config", "training", "finetune", "demo"}, path
        if layer == "loss":
            assert "kernels" not in imported, path
