"""One spawned 4-rank gloo job per session serves every test in this directory (see megatron_harness)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def megatron_job() -> dict:
    from dist_utils import run_distributed
    from megatron_harness import run_all

    return run_distributed(run_all, 4)
