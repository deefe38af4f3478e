"""The tiny HF checkpoints (built once per session) and the one spawned 4-rank job that imports them all."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from hf_models import BATCH, CASES, SEQ, VOCAB, build_case  # noqa: E402


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_sources")
    return {name: build_case(name, str(root / name), seed=i) for i, name in enumerate(CASES)}


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def hf_job(hf_dirs, tokens) -> dict:
    from dist_utils import run_distributed
    from hf_job import run_all

    return run_distributed(run_all, 4, hf_dirs, tokens)
