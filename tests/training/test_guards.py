"""nemo_mft.training.guards: divergence checks, stop signals and the directory lock, in-process."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal

import pytest

from nemo_mft.training.guards import DirectoryLock, DivergenceGuard, RunFailed, StopSignals, TrainingDiverged


def _reports(loss: float, ce: float, count: float = 10.0) -> dict:
    return {"loss": (loss * count, count), "student_ce": (ce * count, count)}


def test_first_iteration_sets_the_reference_and_finite_steps_pass():
    guard = DivergenceGuard(factor=10.0, method="mft")
    guard.check(1, _reports(0.0, 2.5), grad_norm=1.0, lr=1e-4)  # distillation starts at 0: not a reference
    assert guard.reference_ce == pytest.approx(2.5)
    guard.check(2, _reports(0.1, 24.9), grad_norm=3.0, lr=1e-4)


@pytest.mark.parametrize("reports, grad_norm, match", [
    (_reports(float("nan"), 2.0), 1.0, "the loss is nan"),
    (_reports(2.0, float("inf")), 1.0, "the loss is 2.0"),
    (_reports(2.0, 2.0), float("nan"), "the gradient norm is nan"),
    (_reports(0.5, 25.1), 1.0, r"student's cross-entropy 25.1 is above train.divergence_factor=10 x its first value 2.5"),
])
def test_divergence_names_iteration_method_and_lr(reports, grad_norm, match):
    guard = DivergenceGuard(factor=10.0, method="kd_ce", reference_ce=2.5)
    with pytest.raises(TrainingDiverged, match=match) as info:
        guard.check(7, reports, grad_norm=grad_norm, lr=3e-4)
    assert "at iteration 7 (method kd_ce, learning rate 0.0003)" in str(info.value)
    assert "nothing was saved from this state" in str(info.value)
    assert isinstance(info.value, RunFailed) and isinstance(info.value, ValueError)


def test_factor_none_disables_only_the_explosion_check():
    guard = DivergenceGuard(factor=None, method="ft", reference_ce=1.0)
    guard.check(3, _reports(1e6, 1e6), grad_norm=1.0, lr=1.0)
    with pytest.raises(TrainingDiverged):
        guard.check(4, _reports(math.inf, math.inf), grad_norm=1.0, lr=1.0)


def test_stop_signals_turn_sigint_and_sigterm_into_a_request_and_restore_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.agreed() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM and stop.agreed() == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a different signal after the first: still one request
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_sigint_interrupts_at_once():
    """The second SIGINT goes to the handler that was there before (Python's: KeyboardInterrupt)."""
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever earlier tests left installed
    try:
        with pytest.raises(KeyboardInterrupt):
            with StopSignals():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_signal_ignored_on_entry_stays_ignored():
    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


def _hold_lock(directory: str, ready, release) -> None:
    with DirectoryLock(directory):
        ready.set()
        release.wait(30)


def test_directory_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunFailed, match=rf"{tmp_path} is in use by another nemo-mft run \(pid {holder.pid} on "):
            DirectoryLock(str(tmp_path)).acquire()
    finally:
        release.set()
        holder.join(30)
    with DirectoryLock(str(tmp_path)):  # released when the holder exited
        pass


def test_lock_of_a_killed_holder_is_released(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(30)
    holder.kill()
    holder.join(30)
    with DirectoryLock(str(tmp_path)):
        pass
