"""Where a run writes, and the rules that keep two runs from mixing their files.

Checked on every rank BEFORE the process group and the model exist (:func:`plan_run`):

* ``checkpoint.load``: a save directory or one checkpoint. When it holds no checkpoint, the run starts
  fresh only if it is also ``checkpoint.save`` (the "save = load" auto-resume pattern); otherwise error.
* ``checkpoint.pretrained_checkpoint`` is checked by `nemo_mft.training.base_model`.
* ``checkpoint.save`` that already holds checkpoints (a tracker file or ``iter_*`` directories) is
  accepted only when this run resumes from it (``checkpoint.load`` is that directory or one of its
  checkpoints): another run's checkpoints are never overwritten.
* ``logger.log_dir`` with a ``metrics.jsonl`` is accepted only when resuming; the records after the
  resumed iteration are then dropped (:class:`~nemo_mft.training.metrics_log.MetricsLog`), so the file
  reads as one uninterrupted run. A new run needs a new (or emptied) log_dir.

Written by global rank 0 once the checks passed: ``log_dir/config.yaml`` (the resolved recipe) and the
run marker ``save/nemo_mft_run.json`` (run id, log dir, start and resume history).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from nemo_mft.config.schema import FinetuneConfig
from nemo_mft.training.checkpointing import holds_checkpoints, resolve_checkpoint, saved_iterations

RUN_MARKER = "nemo_mft_run.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class RunPlan:
    resume_from: Optional[str]  # checkpoint directory to resume from, or None for a fresh start


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable_directory(path: str, what: str) -> None:
    """NotADirectoryError / PermissionError unless ``path`` is, or can be created as, a writable directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what}={path} is a file, not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{what}={path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}={path}: no permission to write into {existing}")


def plan_run(config: FinetuneConfig) -> RunPlan:
    """Check the run's directories (see the module docstring); raises FileNotFoundError / FileExistsError,
    NotADirectoryError / PermissionError for a log or save path that cannot be a writable directory."""
    ckpt = config.checkpoint
    check_writable_directory(config.logger.log_dir, "logger.log_dir")
    if ckpt.save:
        check_writable_directory(ckpt.save, "checkpoint.save")
    resume_from = None
    if ckpt.load:
        resume_from = resolve_checkpoint(ckpt.load)
        if resume_from is None and not (ckpt.save and _same_dir(ckpt.load, ckpt.save)):
            raise FileNotFoundError(f"checkpoint.load={ckpt.load} holds no checkpoint (neither "
                                    "latest_checkpointed_iteration.txt nor metadata.json); set checkpoint.load=null to start a new run")
    if ckpt.save and holds_checkpoints(ckpt.save):
        resumes_it = resume_from is not None and (_same_dir(os.path.dirname(resume_from), ckpt.save)
                                                 or _same_dir(resume_from, ckpt.save))
        if not resumes_it:
            raise FileExistsError(
                f"checkpoint.save={ckpt.save} already holds checkpoints (iterations "
                f"{saved_iterations(ckpt.save)}) of another run; to continue that run set "
                f"checkpoint.load={ckpt.save}, otherwise choose an empty checkpoint.save")
    metrics = os.path.join(config.logger.log_dir, METRICS_FILE)
    if os.path.exists(metrics) and resume_from is None:
        raise FileExistsError(f"logger.log_dir={config.logger.log_dir} already holds {METRICS_FILE} of another "
                              "run; choose a new logger.log_dir (or resume that run with checkpoint.load)")
    return RunPlan(resume_from=resume_from)


def write_run_files(config: FinetuneConfig, plan: RunPlan, resolved_yaml: str) -> None:
    """Global rank 0: config.yaml in the log dir and the run marker in the save dir."""
    os.makedirs(config.logger.log_dir, exist_ok=True)
    with open(os.path.join(config.logger.log_dir, "config.yaml"), "w") as handle:
        handle.write(resolved_yaml)
    if not config.checkpoint.save:
        return
    os.makedirs(config.checkpoint.save, exist_ok=True)
    marker_path = os.path.join(config.checkpoint.save, RUN_MARKER)
    marker = {}
    if plan.resume_from is not None and os.path.isfile(marker_path):
        with open(marker_path) as handle:
            marker = json.load(handle)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if not marker:
        marker = {"run_id": uuid.uuid4().hex, "started": now, "method": config.mft.method,
                  "log_dir": os.path.abspath(config.logger.log_dir), "resumes": []}
    if plan.resume_from is not None:
        marker.setdefault("resumes", []).append({"at": now, "from": os.path.abspath(plan.resume_from),
                                                 "host": socket.gethostname()})
    tmp = f"{marker_path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(marker, handle, indent=2)
    os.replace(tmp, marker_path)


def write_summary(log_dir: str, summary: dict) -> str:
    path = os.path.join(log_dir, "summary.json")
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    return path
