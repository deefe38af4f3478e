"""What a run shows and records: the tqdm bar, metrics.jsonl / TensorBoard, log lines (rank 0 only)."""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

from nemo_mft.training.metrics_log import MetricsLog, plot_curves
from nemo_mft.training.specialization import Perplexities, tradeoff

logger = logging.getLogger("nemo_mft")

TRAIN_KEYS = ("loss", "student_ce", "teacher_acc", "mixing_weight")


def _mean(reports: dict, key: str) -> Optional[float]:
    if key not in reports:
        return None
    total, count = reports[key]
    return total / count if count > 0 else float("nan")


class Reporter:
    """Collective-free: every rank may call it, only the writer (global rank 0) does anything."""

    def __init__(self, *, writer: bool, log_dir: str, train_iters: int, start_iteration: int, resuming: bool,
                 tensorboard: bool, progress_bar: bool, title: str) -> None:
        self.writer = writer
        self.log_dir = log_dir
        self.title = title
        self.metrics: Optional[MetricsLog] = None
        self.bar = None
        if not writer:
            return
        self.metrics = MetricsLog(log_dir, tensorboard=tensorboard,
                                  resume_iteration=start_iteration if resuming else None)
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=train_iters, initial=start_iteration, desc=title, unit="it",
                            dynamic_ncols=True)

    def train_step(self, iteration: int, reports: dict, *, lr: float, grad_norm: float, tokens_per_s: float,
                   consumed_samples: int, skipped: bool, log: bool) -> None:
        if not self.writer:
            return
        loss = _mean(reports, "loss")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)
        if not log:
            return
        record = {"iteration": iteration, **{key: _mean(reports, key) for key in TRAIN_KEYS}, "lr": lr,
                  "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "consumed_samples": consumed_samples}
        if skipped:
            record["skipped"] = True
        self.metrics.log(record, prefix="train")
        if self.bar is None:
            logger.info("iteration %d: loss %.5f lr %.3g grad_norm %.3g %.0f tokens/s", iteration, loss, lr,
                        grad_norm, tokens_per_s)

    def data(self, iteration: int, accounting: dict) -> None:
        """One metrics record ``{"iteration", "data": {role: counts}}``: what the data readers kept, cut,
        dropped or found without loss tokens (`nemo_mft.data.accounting`)."""
        if self.writer:
            self.metrics.log({"iteration": iteration, "data": accounting}, prefix="data")

    def evaluation(self, iteration: int, base: Perplexities, current: Perplexities) -> dict:
        numbers = tradeoff(base, current)
        if self.writer:
            self.metrics.log({"iteration": iteration, **numbers}, prefix="eval")
            message = (f"eval @ {iteration}: spec_ppl {current.spec_ppl:.4f} gen_ppl {current.gen_ppl:.4f} "
                       f"S {numbers['S']:.4f} DG {numbers['DG']:.4f}")
            if self.bar is not None:
                self.bar.write(message)
            else:
                logger.info(message)
        return numbers

    def close(self) -> None:
        if not self.writer:
            return
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        plot_curves(self.metrics.path, os.path.join(self.log_dir, "curves.png"), title=self.title)


def finite_or_none(value: float) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None
