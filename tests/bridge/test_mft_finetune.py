"""Megatron-Bridge's own finetune() trains with nemo_mft.bridge exactly as nemo_mft's own loop does.

One spawned job of 2 gloo ranks (tests/bridge/mft_bridge_job.py, Bridge made runnable on CPU by
tests/bridge/bridge_harness.py) runs every case; the tests below check its sections. References are
independent of the code under test: our own loop (nemo_mft.megatron: build_model, wrap_with_ddp, build_optimizer,
train_step) on the weights Bridge loaded and the micro-batches Bridge fed each rank; the checkpoints read back
with torch's DCP reader; the base model's logits from a plain megatron-core GPTModel.
"""

from __future__ import annotations

import math

import pytest

import bridge_harness as bh
import mft_bridge_job as job

REL = 1e-5  # fp32 losses, Bridge's float32 reduction vs our loop's float64 one


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return bh.run_ranks(2, job.run_all, str(tmp_path_factory.mktemp("mft-bridge")))[0]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-7)


@pytest.mark.parametrize("layout", ["tp1", "tp2"])
def test_bridge_losses_equal_our_loop(result, layout):
    section = result[layout]
    assert section["batches_match_harness"], "Bridge fed other micro-batches than the harness describes"
    bridge, ours = section["bridge_losses"], section["our_losses"]
    assert len(bridge) == len(ours) == job.ITERS
    assert all(_close(b, o) for b, o in zip(bridge, ours)), (bridge, ours)
    assert len(set(bridge)) == job.ITERS, "the loss did not move: the optimizer did not step"


@pytest.mark.parametrize("layout", ["tp1", "tp2"])
def test_teacher_frozen_pretrained_and_outside_the_model(result, layout):
    section = result[layout]
    assert section["chunk_type"] == "MFTModel"
    assert section["teacher_vs_pretrained"], "the teacher does not hold the pretrained checkpoint's weights"
    assert section["teacher_start_is_student_start"]
    assert section["teacher_unchanged"], "the teacher changed during training"
    assert section["student_changed"]
    assert section["teacher_frozen"] and not section["teacher_params_in_model"]


@pytest.mark.parametrize("layout", ["tp1", "tp2"])
def test_checkpoint_holds_the_student_only(result, layout):
    section = result[layout]
    assert section["checkpoint_keys"] == section["pretrained_keys"], "not a plain GPT model checkpoint"
    assert section["checkpoint_vs_student"], "the checkpoint does not hold the finetuned student"
    assert not section["checkpoint_vs_teacher"]


def test_resume_is_exact_and_keeps_the_pretrained_teacher(result):
    section = result["tp1"]
    assert section["resume_iterations"] == [2], "the resumed run did not start at iteration 3"
    assert section["resume_losses"] == section["bridge_losses"][2:], "2 + resume 1 differs from 3 straight"
    assert section["resumed_student_is_finetuned"]
    assert section["resumed_teacher_is_pretrained"], "after the resume the teacher is not the pretrained model"


@pytest.mark.parametrize("method", ["mft", "mft_incorrect_only", "kd", "kd_ce", "ft"])
def test_every_method_one_iteration(result, method):
    case = result["methods"][method]
    assert case["chunk_type"] == ("GPTModel" if method == "ft" else "MFTModel")
    bridge, ours = case["bridge"], case["ours"]
    expected_keys = {"loss", "student_ce"} | ({"teacher_acc", "mixing_weight"} if method != "ft" else set())
    assert set(bridge) == expected_keys
    for key in ("loss", "student_ce", "mixing_weight"):
        if key in bridge:
            assert _close(bridge[key], ours[key]), (key, bridge[key], ours[key])
    if method in ("ft",):
        assert bridge["loss"] == bridge["student_ce"]
    if method == "kd":  # student == teacher at the start: KL(p || p) = 0
        assert bridge["loss"] == 0.0
    if method == "kd_ce":
        assert _close(bridge["loss"], job.KD_CE_ALPHA * bridge["student_ce"])
        assert bridge["mixing_weight"] == job.KD_CE_ALPHA
    if method == "mft":
        assert bridge["mixing_weight"] > 0.0 and bridge["loss"] > 0.0


def test_lora_teacher_is_the_base_with_adapters_off(result):
    section = result["lora"]
    assert section["chunk_type"] == "GPTModel", "with Bridge LoRA no frozen copy is added"
    assert section["num_trainable"] == 16 and section["trainable_are_adapters"]  # 2 layers x 4 targets x (A, B)
    assert section["base_unchanged"] and section["adapters_changed"]
    assert section["step0_student_eq_teacher"], "LoRA's B starts at zero: the student is the base at step 0"
    assert section["last_student_minus_teacher"] > 1e-3, "the adapters did not change the student"
    assert max(section["teacher_vs_base"]) <= 1e-6 * section["logit_scale"], section["teacher_vs_base"]


@pytest.mark.parametrize("case, words", [
    ("pp_mft", ["pipeline_model_parallel_size=2", "adjust_tensor_shapes_fn"]),
    ("vpp", ["virtual pipeline"]),
    ("cp", ["context_parallel_size=2"]),
    ("l2", ["l2_init_weight=0.1", "not supported"]),
    ("dora", ["DoRA", "LoRA"]),
    ("fsdp", ["FSDP"]),
    ("not_mft_section", ["MFTSection", "Objective"]),
    ("not_gpt_provider", ["GPTModelProvider", "TransformerConfig"]),
    ("step_before_apply", ["apply_mft(config, mft)"]),
    ("twice", ["already applied"]),
    ("other_objective", ["'kd'", "mft tau=0.25"]),
])
def test_refused_configurations_say_why(result, case, words):
    message = result["errors"][case]
    assert message, f"{case}: no error raised"
    for word in words:
        assert word in message, (case, message)


def test_apply_mft_switches_the_objective(result):
    errors = result["errors"]
    assert errors["pp_ft"] == "", "ft (no teacher) must work with pipeline parallelism"
    # calculate_per_token_loss and average_in_collective were set to False / True before apply_mft
    assert errors["normalization"][1:] == (True, False)
    assert errors["teacher_hooks"] == 1
    assert errors["hooks_lora_ft"] == (0, 0), "LoRA (adapters-off teacher) and ft get no frozen copy"
    assert errors["step_type"] == "BridgeMFTForwardStep"
    assert errors["teacher_follows_dtype"] == ("torch.float32", "torch.float64", "torch.float32")


def test_bridge_evaluation_runs_the_student_alone(result):
    section = result["eval"]
    assert section["train_iterations"] == [0, 1]
    evaluations = section["evaluations"]
    assert len(evaluations) >= 2, "Bridge ran no evaluation"
    for case in evaluations:
        assert not case["teacher_ran"] and case["keys"] == ["loss", "student_ce"]
        assert case["loss"] == case["student_ce"]
        (total, count), (ref_total, ref_count) = case["loss"], case["reference"]
        assert count == ref_count > 0 and math.isclose(total, ref_total, rel_tol=REL), case


def test_bf16_wrapper_casts_the_teacher_with_the_student(result):
    section = result["bf16"]
    assert (section["wrapper"], section["chunk"]) == ("Float16Module", "MFTModel")
    assert section["student_dtype"] == section["teacher_dtype"] == "torch.bfloat16"
    assert section["teacher_vs_pretrained_bf16"]
    # the forward step keeps the wrapper from copying the logits to fp32 (the loss computes in fp32 itself)
    assert section["logits_dtypes"] == ("torch.bfloat16", "torch.bfloat16")
    assert section["student_eq_teacher_logits"], "same bf16 weights, same input: the logits must be equal"
    assert math.isfinite(section["loss"]) and section["loss"] > 0.0


def test_a_base_model_through_checkpoint_load_is_refused():
    """checkpoint.load + finetune=true loads the base model into the student only: without pretrained_checkpoint
    the teacher would keep random weights, so the hook refuses before building anything. A plain resume
    (finetune=false) is allowed: the teacher is then the seeded initial model, as at the run's start."""
    from types import SimpleNamespace

    from nemo_mft.bridge.teacher import FrozenTeacherHook

    checkpoint = SimpleNamespace(pretrained_checkpoint=None, load="/runs/base", finetune=True)
    with pytest.raises(ValueError, match="checkpoint.load with checkpoint.finetune=true"):
        FrozenTeacherHook(provider=None, checkpoint=checkpoint)([object()])
