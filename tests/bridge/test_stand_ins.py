"""The TEST-ONLY TransformerEngine stand-in stays a test fixture: it lives under tests/bridge, nothing of the
package refers to it, megatron-core kept its non-TE paths, and its placeholders refuse to be used."""

import os
import pathlib
import sys

import pytest

import cpu_bridge

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_stand_in_is_the_test_only_package_under_tests_bridge():
    import transformer_engine
    import transformer_engine.pytorch as te

    assert transformer_engine.IS_TEST_ONLY_STAND_IN
    assert pathlib.Path(transformer_engine.__file__).resolve().is_relative_to(REPO / "tests" / "bridge" / "stand_ins")
    assert cpu_bridge.STAND_INS_DIR in sys.path
    with pytest.raises(RuntimeError, match="TEST-ONLY transformer_engine stand-in"):
        te.Linear(4, 4)
    with pytest.raises(RuntimeError, match="TEST-ONLY"):
        te.ops.Sequential()


def test_megatron_core_and_bridge_peft_see_no_transformer_engine():
    import megatron.bridge.peft.utils as peft_utils
    import megatron.core.extensions.transformer_engine as mcore_te
    import megatron.core.models.gpt.gpt_layer_specs as gpt_specs
    import megatron.core.tensor_parallel.random as mcore_random
    from megatron.core.utils import is_te_min_version

    assert not mcore_te.HAVE_TE and not gpt_specs.HAVE_TE and not mcore_random.HAVE_TE
    assert not peft_utils.HAVE_TE
    assert not is_te_min_version("0.0.1")


def test_the_package_never_refers_to_the_stand_in():
    offenders = [str(path) for path in (REPO / "nemo_mft").rglob("*.py")
                 if any(word in path.read_text() for word in ("stand_ins", "cpu_bridge", "IS_TEST_ONLY_STAND_IN"))]
    assert offenders == []
    assert not (REPO / "nemo_mft" / "transformer_engine").exists()


def test_installing_after_a_transformer_engine_import_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_bridge, "_installed", False)
    with pytest.raises(RuntimeError, match="imported before install_stand_ins"):
        cpu_bridge.install_stand_ins()
