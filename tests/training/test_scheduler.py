"""nemo_mft.training.scheduler: the learning rate at given iterations against the closed-form schedule."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_mft.config.schema import DatasetSection, FinetuneConfig, OptimizerSection, SchedulerSection, TrainSection
from nemo_mft.training.scheduler import build_scheduler

LR, MIN_LR, WARMUP, ITERS = 1e-3, 1e-4, 4, 20


def _config(style: str, warmup: int = WARMUP, decay_iters=None, weight_decay: float = 0.01) -> FinetuneConfig:
    return FinetuneConfig(dataset=DatasetSection(dataset_root="/unused"), train=TrainSection(train_iters=ITERS),
                          optimizer=OptimizerSection(lr=LR, min_lr=MIN_LR, weight_decay=weight_decay),
                          scheduler=SchedulerSection(lr_warmup_iters=warmup, lr_decay_style=style,
                                                     lr_decay_iters=decay_iters))


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=123.0, weight_decay=5.0)


def _trace(config: FinetuneConfig, steps: int) -> list[float]:
    """lr in force for iterations 1..steps (the loop reads the lr, trains, then steps the scheduler)."""
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(1)
    return lrs


def _expected(style: str, k: int, warmup: int = WARMUP, decay: int = ITERS) -> float:
    """The schedule written out: linear warmup from 0, then decay from LR to MIN_LR until ``decay``."""
    if warmup and k <= warmup:
        return LR * k / warmup
    if style == "constant":
        return LR
    if k > decay:
        return MIN_LR
    ratio = (k - warmup) / (decay - warmup)
    if style == "linear":
        return MIN_LR + (LR - MIN_LR) * (1.0 - ratio)
    return MIN_LR + (LR - MIN_LR) * 0.5 * (math.cos(math.pi * ratio) + 1.0)


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
def test_warmup_then_decay(style):
    lrs = _trace(_config(style), ITERS + 3)
    for k, lr in enumerate(lrs):
        assert lr == pytest.approx(_expected(style, k), rel=1e-12, abs=1e-15), (style, k)
    assert lrs[0] == 0.0 and lrs[WARMUP] == pytest.approx(LR)
    if style != "constant":
        assert lrs[ITERS] == pytest.approx(MIN_LR) and lrs[ITERS + 2] == pytest.approx(MIN_LR)


def test_no_warmup_starts_at_the_peak_and_decay_iters_override():
    lrs = _trace(_config("cosine", warmup=0, decay_iters=10), 12)
    assert lrs[0] == pytest.approx(LR)
    assert lrs[5] == pytest.approx(_expected("cosine", 5, warmup=0, decay=10))
    assert lrs[10] == pytest.approx(MIN_LR) and lrs[11] == pytest.approx(MIN_LR)


def test_weight_decay_is_constant():
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, _config("cosine", weight_decay=0.05))
    for _ in range(ITERS):
        assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.05)
        scheduler.step(1)


def _resumed_at(step: int, config: FinetuneConfig, follow_recipe: bool) -> torch.optim.Optimizer:
    first = _optimizer()
    scheduler = build_scheduler(first, _config("cosine"))
    scheduler.step(step)
    second = _optimizer()
    resumed = build_scheduler(second, config, follow_recipe=follow_recipe)
    resumed.load_state_dict(scheduler.state_dict())
    return second, resumed


def test_resumed_schedule_continues_exactly():
    """A scheduler restored from another's state_dict at iteration 7 gives the same rates from there on."""
    reference = _trace(_config("cosine"), ITERS)
    optimizer, resumed = _resumed_at(7, _config("cosine"), follow_recipe=True)
    for k in range(7, ITERS):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference[k], rel=1e-12), k
        resumed.step(1)


@pytest.mark.parametrize("follow_recipe", [True, False])
def test_changed_peak_on_resume(follow_recipe):
    """An allowed change of optimizer.lr takes effect from the resumed iteration (follow_recipe); a
    checkpoint without a stored recipe keeps its own schedule."""
    changed = _config("cosine")
    changed.optimizer.lr = 5e-3
    optimizer, _ = _resumed_at(7, changed, follow_recipe=follow_recipe)
    peak = 5e-3 if follow_recipe else LR
    expected = MIN_LR + (peak - MIN_LR) * 0.5 * (math.cos(math.pi * (7 - WARMUP) / (ITERS - WARMUP)) + 1.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
