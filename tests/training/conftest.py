"""One spawned 2-rank gloo job serves the checkpointing and evaluation tests (see training_job.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def training_job(tmp_path_factory) -> dict:
    from dist_utils import run_distributed
    from training_job import run_all

    return run_distributed(run_all, 2, str(tmp_path_factory.mktemp("training_job")))
