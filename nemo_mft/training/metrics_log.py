"""The run directory's record: metrics.jsonl, optional TensorBoard events, and curves.png."""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null keeps the file parseable
    return value


class MetricsLog:
    """Appends one JSON object per call to ``log_dir/metrics.jsonl``; mirrors scalars to TensorBoard.

    Only the process that owns the run directory (global rank 0) should create one. On resume the file
    is kept: records from the interrupted run beyond the resumed iteration are dropped first, so the
    file reads as one uninterrupted run.
    """

    def __init__(self, log_dir: str, tensorboard: bool = True, resume_iteration: int | None = None) -> None:
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, "metrics.jsonl")
        if resume_iteration is not None and os.path.exists(self.path):
            self._truncate_after(resume_iteration)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: no TensorBoard events are written", stacklevel=2)
            else:
                self._writer = SummaryWriter(log_dir=os.path.join(log_dir, "tensorboard"))

    def _truncate_after(self, iteration: int) -> None:
        with open(self.path) as handle:
            kept = [line for line in handle if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        with open(self.path, "w") as handle:
            handle.writelines(kept)

    def log(self, record: dict[str, Any], prefix: str = "train") -> None:
        """Write ``record`` (must hold ``iteration``) as one line; numbers also go to TensorBoard."""
        clean = {key: _jsonable(value) for key, value in record.items()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self._writer is not None:
            step = clean["iteration"]
            for key, value in clean.items():
                if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_records(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_curves(metrics_path: str, out_path: str, title: str = "") -> None:
    """curves.png: S and DG over iterations (left), training loss (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(metrics_path)
    evals = [r for r in records if "S" in r]
    train = [r for r in records if "loss" in r]
    fig, (ax_tradeoff, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    if evals:
        iters = [r["iteration"] for r in evals]
        ax_tradeoff.plot(iters, [r["S"] for r in evals], marker="o", label="S (specialization)")
        ax_tradeoff.plot(iters, [r["DG"] for r in evals], marker="s", label="DG (degeneralization)")
        ax_tradeoff.axhline(0.0, color="grey", linewidth=0.5)
        ax_tradeoff.legend()
    ax_tradeoff.set_xlabel("iteration")
    ax_tradeoff.set_ylabel("perplexity difference vs base")
    ax_tradeoff.set_title("specialization vs degeneralization")
    if train:
        ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train])
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("training loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
