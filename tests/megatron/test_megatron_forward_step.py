"""nemo_mft.megatron.forward_step / losses: loss_func contract and every method against references.

The spawned job evaluates each method's loss_func on the same TP=2 logits (vocab 100 padded to 128, half
of the labels set to the teacher's argmax so that teacher-right and teacher-wrong tokens both occur); here
the results are checked against the float64 reference of tests/loss/reference.py applied to the gathered
full-vocabulary logits, and ft against megatron-core's own GPTModel(labels=...) loss.
"""

from __future__ import annotations

import pytest
import torch

from megatron_harness import TAU, TEMPERATURE, VOCAB, load_loss_reference, objective
from nemo_mft.megatron.forward_step import REPORT_KEYS, make_forward_step
from nemo_mft.megatron.schedule import with_teacher_activations

REL = 1e-5
SPECS = {"mft": (TAU, True, False), "kd": (TAU, True, True), "mft_incorrect_only": (TAU, False, False)}


def _close(actual: float, expected: float, rel: float = REL, atol: float | None = None) -> bool:
    """|actual - expected| <= max(rel |expected|, atol); atol defaults to rel * 1e-6."""
    return abs(actual - expected) <= max(rel * abs(expected), rel * 1e-6 if atol is None else atol)


def test_forward_step_follows_the_method():
    train = make_forward_step(objective("mft"), vocab_size=VOCAB, tp_group=None)
    evaluate = make_forward_step(objective("mft"), vocab_size=VOCAB, tp_group=None, evaluate=True)
    ft = make_forward_step(objective("ft"), vocab_size=VOCAB, tp_group=None)
    assert (train.runs_teacher, evaluate.runs_teacher, ft.runs_teacher) == (True, False, False)
    assert train.report_keys == REPORT_KEYS and ft.report_keys == evaluate.report_keys == ("loss", "student_ce")
    with pytest.raises(TypeError, match="nemo_mft.methods.Objective"):
        make_forward_step("mft", vocab_size=VOCAB, tp_group=None)
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        make_forward_step(objective("mft"), vocab_size=0, tp_group=None)


def test_teacher_activations_widen_the_hidden_dimension_only():
    """The schedule's adjust_tensor_shapes_fn: [S, B, H] -> [S, B, 2H] for receive and send, B unchanged."""
    recv, send = with_teacher_activations([(16, 2, 32)], [(8, 2, 32)])
    assert (recv, send) == ([(16, 2, 64)], [(8, 2, 64)])
    assert with_teacher_activations([None], []) == ([None], [])


def test_ft_equals_megatron_cross_entropy(megatron_job):
    out = megatron_job["forward_step"]
    ours, megatron = out["ft_vs_megatron"]
    assert _close(ours, megatron, 1e-6)
    num_tokens, mask_sum, dtype = out["ft_num_tokens"]
    assert num_tokens == mask_sum and dtype == "torch.int32"
    assert out["ft_reports"]["loss"] == [ours, mask_sum] and out["ft_reports"]["student_ce"] == [ours, mask_sum]
    assert out["ft_report_dtypes"] == ["torch.float32"] and out["ft_loss_requires_grad"]


@pytest.mark.parametrize("method", ["mft", "kd", "mft_incorrect_only"])
def test_methods_match_float64_reference(megatron_job, method):
    out = megatron_job["forward_step"]
    logits = out["logits"]
    assert torch.equal(logits["student"], logits["teacher"]), "identical weights must give identical logits"
    tau, correct_all, distill_only = SPECS[method]
    ref = load_loss_reference().reference_mft(
        logits["student"], logits["teacher"], logits["labels"], tau=tau, temperature=TEMPERATURE,
        correct_all=correct_all, distill_only=distill_only, loss_mask=logits["loss_mask"], vocab_size=VOCAB, reduction="sum")
    reports = out["methods"][method]["reports"]
    weight = float(ref.stats["weight_sum"])
    assert reports["loss"][1] == reports["student_ce"][1] == weight
    # kd of identical logits is 0 by cancellation of terms the size of the CE: fp32 can only get it
    # within a few ulps of those terms (what it gives depends on the CPU's vector code).
    cancellation = 8 * torch.finfo(torch.float32).eps * float(ref.stats["student_ce"]) * weight
    assert _close(reports["loss"][0], float(ref.loss), atol=cancellation)
    assert _close(out["methods"][method]["loss"], float(ref.loss), atol=cancellation)
    assert _close(reports["student_ce"][0], float(ref.stats["student_ce"]) * weight)
    assert _close(reports["teacher_acc"][0], float(ref.stats["teacher_accuracy"]) * weight)
    assert _close(reports["mixing_weight"][0], float(ref.stats["mixing_weight"]) * weight)


def test_methods_differ_where_they_should(megatron_job):
    methods = megatron_job["forward_step"]["methods"]
    acc = methods["mft"]["reports"]["teacher_acc"]
    assert 0 < acc[0] < acc[1], "the crafted labels must mix teacher-right and teacher-wrong tokens"
    mix = {m: methods[m]["reports"]["mixing_weight"][0] for m in SPECS}
    assert mix["kd"] == 0 < mix["mft_incorrect_only"] < mix["mft"]
    assert len({methods[m]["reports"]["student_ce"][0] for m in methods}) == 1


def test_ft_excludes_padding_columns(megatron_job):
    out = megatron_job["forward_step"]
    logits = out["logits"]
    s = logits["student"].double()
    assert s.shape[-1] == 128
    ce = -torch.log_softmax(s[..., :VOCAB], dim=-1).gather(-1, logits["labels"][..., None]).squeeze(-1)
    expected = float((ce * logits["loss_mask"].double()).sum())
    with_padding = -torch.log_softmax(s, dim=-1).gather(-1, logits["labels"][..., None]).squeeze(-1)
    assert not _close(float((with_padding * logits["loss_mask"].double()).sum()), expected)
    ft = out["methods"]["ft"]
    assert not ft["runs_teacher"] and set(ft["reports"]) == {"loss", "student_ce"}
    assert _close(ft["loss"], expected)


def test_evaluate_reports_student_cross_entropy(megatron_job):
    out = megatron_job["forward_step"]
    evaluate = out["evaluate"]
    assert not evaluate["runs_teacher"] and set(evaluate["reports"]) == {"loss", "student_ce"}
    assert evaluate["reports"]["loss"] == evaluate["reports"]["student_ce"]
    assert _close(evaluate["reports"]["loss"][0], out["methods"]["ft"]["loss"])


def test_kd_ce_is_the_constant_mix_of_distillation_and_cross_entropy(megatron_job):
    from megatron_harness import KD_CE_ALPHA

    out = megatron_job["forward_step"]["kd_ce"]
    s, t = out["student"].double(), out["teacher"].double()
    logits = megatron_job["forward_step"]["logits"]
    labels, mask = logits["labels"], logits["loss_mask"].double()
    kd = load_loss_reference().reference_mft(s, t, labels, tau=0.0, temperature=TEMPERATURE, distill_only=True,
                                             loss_mask=mask, vocab_size=VOCAB, reduction="sum")
    log_p = torch.log_softmax(s[..., :VOCAB], dim=-1)
    ce = float((-log_p.gather(-1, labels[..., None]).squeeze(-1) * mask).sum())
    assert float(kd.loss) > 1e-3 * ce, "the sharpened teacher must make the distillation term non-trivial"
    expected = (1 - KD_CE_ALPHA) * float(kd.loss) + KD_CE_ALPHA * ce
    assert _close(out["loss"], expected)
    assert _close(out["reports"]["loss"][0], expected)
    weight = float(mask.sum())
    assert out["reports"]["mixing_weight"] == pytest.approx([KD_CE_ALPHA * weight, weight])
    assert _close(out["reports"]["student_ce"][0], ce)
    # Gradient w.r.t. the (gathered) student logits: (1 - a) * KD gradient + a * (softmax(s) - onehot(y)) * w.
    onehot = torch.nn.functional.one_hot(labels, s.shape[-1]).double()
    probs = torch.zeros_like(s)
    probs[..., :VOCAB] = torch.softmax(s[..., :VOCAB], dim=-1)
    expected_grad = (1 - KD_CE_ALPHA) * kd.grad.reshape(s.shape) + KD_CE_ALPHA * (probs - onehot) * mask[..., None]
    assert torch.allclose(out["grad"].double(), expected_grad, rtol=1e-4, atol=1e-6)
    assert float(out["grad"][..., VOCAB:].abs().max()) == 0.0  # padding columns get no gradient


def test_signature_fits_megatron_bridge_without_state_injection():
    """Megatron-Bridge inspects a forward step's signature: (data_iterator, model) runs as is, with no
    GlobalState injected (its maybe_inject_state); megatron-core's schedules call it the same way."""
    import inspect

    step = make_forward_step(objective("mft"), vocab_size=VOCAB, tp_group=None)
    assert list(inspect.signature(step).parameters) == ["data_iterator", "model"]


def test_inplace_gradient_is_the_default_and_changes_nothing_else(megatron_job):
    """mft writes the student logits' gradient into their buffer by default; loss, logits gradient and every
    parameter gradient are identical to the out-of-place run."""
    runs = megatron_job["forward_step"]["inplace"]
    assert make_forward_step(objective("mft"), vocab_size=VOCAB, tp_group=None).objective.inplace_grad is True
    assert runs[True]["overwritten"] and runs[True]["holds_grad"]
    assert not runs[False]["overwritten"] and not runs[False]["holds_grad"]
    assert runs[True]["loss"] == runs[False]["loss"]
    assert torch.equal(runs[True]["logits_grad"], runs[False]["logits_grad"])
    assert len(runs[True]["param_grads"]) == len(runs[False]["param_grads"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(runs[True]["param_grads"], runs[False]["param_grads"]))
