"""What stops a run early, cleanly: divergence, a stop signal, and another run in the same directory.

- :class:`DivergenceGuard`: a non-finite loss or gradient norm, or a mean student cross-entropy far above
  the run's first (``train.divergence_factor``), raises :class:`TrainingDiverged` before anything is saved.
- :class:`StopSignals`: SIGINT / SIGTERM set a flag; the loop asks :meth:`StopSignals.agreed` once per
  iteration (one tiny all-reduce), so every rank stops after the same iteration.
- :class:`DirectoryLock`: an exclusive ``flock`` on ``DIR/.nemo_mft.lock``, held by global rank 0 for the
  run; the kernel releases it when the process dies, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import socket
from typing import Optional

import torch

__all__ = ["RunFailed", "TrainingDiverged", "DivergenceGuard", "StopSignals", "DirectoryLock", "LOCK_FILE"]

LOCK_FILE = ".nemo_mft.lock"


class RunFailed(ValueError):
    """A user-facing reason why a run cannot start or go on (the CLI prints it and exits with code 2)."""


class TrainingDiverged(RunFailed):
    """The loss or gradient left the finite range, or the loss exploded; nothing was saved from it."""


def _mean(reports: dict, key: str) -> float:
    total, count = reports[key]
    return total / count if count > 0 else float("nan")


class DivergenceGuard:
    """Checks each iteration's reports (see the module docstring).

    ``reference_ce``: the mean student cross-entropy of the run's first iteration (kept in checkpoints, so
    a resumed run compares with the same value); None until the first iteration has run. The student's
    cross-entropy is the quantity compared because every method reports it and it starts at its natural
    scale: a distillation loss starts at 0 when student and teacher are the same model.
    """

    def __init__(self, factor: Optional[float], method: str, reference_ce: Optional[float] = None) -> None:
        self.factor = factor
        self.method = method
        self.reference_ce = reference_ce

    def check(self, iteration: int, reports: dict, grad_norm: float, lr: float) -> None:
        loss, ce = _mean(reports, "loss"), _mean(reports, "student_ce")
        where = f"at iteration {iteration} (method {self.method}, learning rate {lr:.3g})"
        if not (math.isfinite(loss) and math.isfinite(ce)):
            raise TrainingDiverged(f"training diverged {where}: the loss is {loss}; nothing was saved from this "
                                   "state. Lower optimizer.lr, raise scheduler.lr_warmup_iters or set "
                                   "optimizer.clip_grad")
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"training diverged {where}: the gradient norm is {grad_norm}; nothing was "
                                   "saved from this state. Lower optimizer.lr or set optimizer.clip_grad")
        if self.reference_ce is None:
            self.reference_ce = ce
        elif self.factor is not None and ce > self.factor * self.reference_ce:
            raise TrainingDiverged(
                f"training diverged {where}: the student's cross-entropy {ce:.4g} is above "
                f"train.divergence_factor={self.factor:g} x its first value {self.reference_ce:.4g}; nothing "
                "was saved from this state. Lower optimizer.lr, or raise or disable train.divergence_factor")


class StopSignals:
    """Context manager: SIGINT and SIGTERM request a stop instead of ending the process at once.

    A second signal of the same kind restores the previous handler and re-raises it (a second Ctrl-C
    interrupts immediately); a signal of the other kind after the first is absorbed (torchrun answers a
    Ctrl-C by sending its workers SIGTERM, which must not cut the clean stop short). Install it in the main
    thread; the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
        elif signum == self.received:
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)

    def __enter__(self) -> "StopSignals":
        for signum in self.SIGNALS:
            # A signal ignored on entry stays ignored (a shell's background job ignores SIGINT: POSIX).
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def agreed(self) -> Optional[int]:
        """The signal any rank received (the largest number), the same on every rank; None when none did.

        Collective over the default group: every rank must call it at the same point.
        """
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        flag = torch.tensor([self.received or 0], dtype=torch.int32, device=device)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None


class DirectoryLock:
    """Exclusive lock of a directory for one run (see the module docstring); a context manager.

    Raises :class:`RunFailed` naming the holder (pid and host written in the lock file) when another
    process holds it. The lock file stays (an empty marker); only the lock is released.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self._handle = None

    def acquire(self) -> "DirectoryLock":
        os.makedirs(self.directory, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFailed(f"{self.directory} is in use by another nemo-mft run ({holder}); wait for it to finish "
                            "or choose another directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
