"""The tiny HF checkpoints of tests/hf (one per family, `hf_models.CASES`) for the import/export round trips.

tests/hf's conftest builds them for its own directory; a session fixture of a conftest is visible only below
it, so this one builds the same cases again (about 3 s) when both directories run.
"""

from __future__ import annotations

import os
import sys

import pytest

_HF_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf")
if _HF_TESTS not in sys.path:
    sys.path.insert(0, _HF_TESTS)

from hf_models import CASES, build_case  # noqa: E402


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_sources")
    return {name: build_case(name, str(root / name), seed=i) for i, name in enumerate(CASES)}
