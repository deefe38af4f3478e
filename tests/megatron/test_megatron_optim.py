"""nemo_mft.megatron.optim: DDP buffers and optimizer states hold student parameters only."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("check", ["optimizer_student_only", "ddp_student_only", "ddp_state_keys",
                                   "optimizer_state_student_only", "adam_step_ok"])
def test_student_only(megatron_job, check):
    assert megatron_job["model"][check] is True, check
