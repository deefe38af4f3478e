"""nemo_mft.methods: the one table of method names, what each needs, and the validated `Objective`."""

from __future__ import annotations

import dataclasses

import pytest

from nemo_mft.methods import METHODS, MethodSpec, Objective, method_spec


def test_method_table():
    assert METHODS == ("mft", "ft", "kd", "mft_incorrect_only", "kd_ce")
    assert method_spec("mft") == MethodSpec(uses_teacher=True, uses_tau=True)
    assert method_spec("ft") == MethodSpec(uses_teacher=False, uses_tau=False)
    assert method_spec("kd") == MethodSpec(uses_teacher=True, uses_tau=False, distill_only=True)
    assert method_spec("mft_incorrect_only") == MethodSpec(uses_teacher=True, uses_tau=True, correct_all=False)
    assert method_spec("kd_ce") == MethodSpec(uses_teacher=True, uses_tau=False, distill_only=True, mixes_ce=True)
    for bad in ("dpo", "MFT", None, 3):
        with pytest.raises(ValueError, match=r"method must be one of \('mft', 'ft'"):
            method_spec(bad)


@pytest.mark.parametrize("method, uses_teacher, loss_tau, label", [
    ("mft", True, 0.3, "mft tau=0.3"),
    ("mft_incorrect_only", True, 0.3, "mft_incorrect_only tau=0.3"),
    ("kd", True, 0.0, "kd"),
    ("kd_ce", True, 0.0, "kd_ce alpha=0.4"),
    ("ft", False, 0.0, "ft"),
])
def test_objective_follows_its_method(method, uses_teacher, loss_tau, label):
    objective = Objective(method=method, tau=0.3, kd_ce_alpha=0.4)
    assert objective.uses_teacher is uses_teacher
    assert objective.loss_tau == loss_tau
    assert objective.label == label
    assert objective.spec is method_spec(method)


def test_objective_defaults_are_the_papers():
    objective = Objective()
    assert (objective.method, objective.tau, objective.temperature, objective.impl, objective.inplace_grad) == \
        ("mft", 0.25, 1.0, "auto", True)


@pytest.mark.parametrize("field, value, message", [
    ("method", "lora", "method must be one of"),
    ("tau", -0.01, "tau must be in"),
    ("tau", 1.5, "tau must be in"),
    ("tau", float("nan"), "tau must be in"),
    ("tau", True, "tau must be in"),
    ("temperature", 0.0, "temperature must be > 0"),
    ("temperature", float("inf"), "temperature must be > 0"),
    ("kd_ce_alpha", 1.5, "kd_ce_alpha must be in"),
    ("impl", "cuda", "impl must be one of"),
    ("inplace_grad", 1, "inplace_grad must be true or false"),
])
def test_objective_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        Objective(**{field: value})


def test_objective_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Objective().tau = 0.5
