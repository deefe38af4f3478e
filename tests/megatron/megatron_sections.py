"""The sections of the spawned 4-rank job (see megatron_harness.run_all). Each returns plain data checked
by the test files in the parent; rank-local facts are reduced with all_gather_object so a failure on any
rank shows up."""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_harness import (L2_LR, L2_SHIFT, L2_WEIGHT, LAYOUTS, MBS, NUM_MB, SEQ, STEPS, VOCAB, RecordingStep,
                              all_records, build, deterministic_init, forward_step, gather_full, gather_vocab,
                              microbatch, optimizer, step_iterator, tiny_config)


def _all(flag: bool) -> bool:
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, bool(flag))
    return all(everyone)


def _catch(fn, *args, **kwargs) -> str | None:
    """'ValueError: message' when fn raises ValueError, None when it returns, re-raises anything else."""
    try:
        fn(*args, **kwargs)
    except ValueError as exc:
        return f"ValueError: {exc}"
    return None


def cpu_compat_outside_section() -> dict:
    """Outside megatron_on_cpu (before entering it and after leaving it): nothing is redirected."""
    from nemo_mft.megatron import cpu_fallback_active

    try:
        redirected = torch.zeros(2, device="cuda").device.type == "cpu"
    except (RuntimeError, AssertionError):  # "Torch not compiled with CUDA enabled"
        redirected = False
    return {"active": cpu_fallback_active(), "current_device_patched": torch.cuda.current_device.__module__,
            "redirected": redirected}


def cpu_compat_section() -> dict:
    from nemo_mft.megatron import cpu_fallback_active, megatron_on_cpu

    with megatron_on_cpu() as nested:
        nested_active = nested and cpu_fallback_active()
    return {
        "enabled": cpu_fallback_active(),
        "again": nested_active and cpu_fallback_active(),
        "cuda_available": torch.cuda.is_available(),
        "factory_device": torch.zeros(2, device="cuda").device.type,
        "int_device": torch.empty(2, device=torch.cuda.current_device()).device.type,
        "to_device": torch.ones(2).to("cuda").device.type,
        "cuda_method": torch.ones(2).cuda().device.type,
    }


def errors_section() -> dict:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from nemo_mft.megatron import GPTOptions, destroy_parallel, initialize_parallel
    from nemo_mft.megatron.mft_model import MFTModel
    from nemo_mft.megatron.model import _build_gpt

    out = {"world_not_divisible": _catch(initialize_parallel, 3, 1, seed=1)}
    layout = initialize_parallel(2, 1, seed=1)
    out["tp_mismatch"] = _catch(build, layout, 1, 1)
    out["sequence_parallel_without_apex"] = _catch(build, layout, 2, 1, sequence_parallel=True)
    out["vocab_not_divisible"] = _catch(build, layout, 2, 1, padded_vocab=127)
    gpt, spec = GPTOptions(padded_vocab_size=128, max_sequence_length=SEQ), get_gpt_layer_local_spec()
    student = _build_gpt(tiny_config(2), spec, gpt, layout.groups)
    teacher = _build_gpt(tiny_config(2, num_layers=2), spec, gpt, layout.groups)
    out["teacher_mismatch"] = _catch(MFTModel, student, teacher)
    out["teacher_match"] = _catch(MFTModel, student, _build_gpt(tiny_config(2), spec, gpt, layout.groups))
    destroy_parallel()
    return out


def model_section() -> dict:
    """Teacher invisibility, freezing, checkpoint keys, sync; PP=2 x TP=2, then causality/dropout on TP=2."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from nemo_mft.megatron import (GPTOptions, destroy_parallel, initialize_parallel, sync_teacher_from_student,
                                   train_step, unwrap, wrap_with_ddp)
    from nemo_mft.megatron.model import _build_gpt

    out = {}
    layout = initialize_parallel(2, 2, seed=3)
    chunks = build(layout, 2, 2)
    mft = unwrap(chunks[0])
    teacher, student = mft.teacher, mft.student
    t_ids = {id(p) for p in teacher.parameters()}
    t_ptrs = {p.data_ptr() for p in teacher.parameters()}
    s_ptrs = {p.data_ptr() for p in student.parameters()}
    out["teacher_at_build_equals_student"] = _all(all(
        torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values())
        if isinstance(a, torch.Tensor)))
    out["no_teacher_in_parameters"] = _all(not t_ids & {id(p) for p in mft.parameters()}
                                           and len(list(mft.parameters())) == len(list(student.parameters())))
    out["no_teacher_in_modules"] = _all(all(m is not teacher for m in mft.modules()))
    state = mft.state_dict()
    out["state_dict_student_only"] = _all(all(v.data_ptr() in s_ptrs and v.data_ptr() not in t_ptrs
                                              for v in state.values() if isinstance(v, torch.Tensor)))
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    sharded = mft.sharded_state_dict()
    sharded_tensors = [sh for sh in nested_values(sharded) if isinstance(sh, ShardedTensor)]
    out["sharded_student_only"] = _all(all(sh.data.data_ptr() in s_ptrs and sh.data.data_ptr() not in t_ptrs
                                           for sh in sharded_tensors))
    plain = _build_gpt(tiny_config(2, 2), get_gpt_layer_local_spec(),
                       GPTOptions(padded_vocab_size=128, max_sequence_length=SEQ), layout.groups)
    ft_chunk = unwrap(build(layout, 2, 2, with_teacher=False)[0])
    out["ft_has_no_teacher"] = _all(ft_chunk.teacher is None and not ft_chunk.has_teacher)
    out["state_keys_equal_plain_gpt"] = _all(list(state) == list(plain.state_dict())
                                             == list(ft_chunk.state_dict()))
    out["sharded_keys_equal_plain_gpt"] = _all(
        sorted(sharded) == sorted(plain.sharded_state_dict()) == sorted(ft_chunk.sharded_state_dict()))
    out["state_keys_no_prefix"] = _all(not any(k.startswith(("module.", "student.", "teacher.")) for k in state))
    mft.train()
    out["teacher_eval_after_train"] = _all(not teacher.training and student.training)
    out["teacher_frozen"] = _all(not any(p.requires_grad for p in teacher.parameters()))

    deterministic_init(chunks, seed=5)
    ddp = wrap_with_ddp(chunks, layout.groups)
    adam = optimizer(ddp, layout, lr=1e-2)
    opt_ids = {id(p) for group in adam.param_groups for p in group["params"]}
    out["optimizer_student_only"] = _all(not opt_ids & t_ids and opt_ids == {id(p) for p in student.parameters()})
    ddp_ids = {id(p) for buffer in ddp[0].buffers for p in buffer.params}
    out["ddp_student_only"] = _all(not ddp_ids & t_ids and ddp_ids == {id(p) for p in student.parameters()})
    out["ddp_state_keys"] = _all(list(ddp[0].state_dict()) == list(state))

    before = {k: v.clone() for k, v in teacher.state_dict().items() if isinstance(v, torch.Tensor)}
    result = train_step(forward_step(layout), step_iterator(0, layout.dp_rank, layout.dp_size), ddp, adam,
                        groups=layout.groups, num_microbatches=NUM_MB // layout.dp_size, seq_length=SEQ,
                        micro_batch_size=MBS)
    out["adam_step_ok"] = result.update_successful and result.grad_norm > 0
    out["teacher_unchanged_after_step"] = _all(all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()
                                                   if isinstance(v, torch.Tensor)))
    out["teacher_grads_none"] = _all(all(p.grad is None for p in teacher.parameters()))
    out["student_changed"] = _all(any(not torch.equal(a, before[k]) for k, a in student.state_dict().items()
                                      if isinstance(a, torch.Tensor)))
    sync_teacher_from_student(ddp)
    out["sync_teacher"] = _all(all(torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                                      teacher.state_dict().values())
                                   if isinstance(a, torch.Tensor)))
    torch_optimizers = [o.optimizer for o in getattr(adam, "chained_optimizers", [adam])]
    state_ids = {id(p) for o in torch_optimizers for p in o.state}
    out["optimizer_state_student_only"] = _all(state_ids == {id(p) for p in student.parameters()})
    destroy_parallel()

    # TP=2 (DP=2) without pipeline: the chunk can be called directly.
    layout = initialize_parallel(2, 1, seed=3)
    chunks = build(layout, 2, 1, hidden_dropout=0.3, attention_dropout=0.3)
    deterministic_init(chunks)
    mft = unwrap(chunks[0])
    batch = microbatch(0)
    mft.train()
    s1, t1 = mft(batch["tokens"], batch["position_ids"], None, run_teacher=True)
    s2, t2 = mft(batch["tokens"], batch["position_ids"], None, run_teacher=True)
    out["logits_shape"] = list(s1.shape)
    out["teacher_deterministic_in_train_mode"] = _all(torch.equal(t1, t2))
    out["student_dropout_active"] = _all(not torch.equal(s1, s2))
    out["teacher_no_graph"] = _all(t1.grad_fn is None and not t1.requires_grad and s1.requires_grad)
    mft.eval()
    changed = batch["tokens"].clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    with torch.no_grad():
        a, _ = mft(batch["tokens"], batch["position_ids"], None, run_teacher=False)
        b, _ = mft(changed, batch["position_ids"], None, run_teacher=False)
    out["causal_prefix_unchanged"] = _all(torch.equal(a[:, :9], b[:, :9]))
    out["causal_suffix_changed"] = _all(not torch.equal(a[:, 9:], b[:, 9:]))
    out["run_teacher_without_teacher"] = _catch(
        unwrap(build(layout, 2, 1, with_teacher=False, hidden_dropout=0.3, attention_dropout=0.3)[0]),
        batch["tokens"], batch["position_ids"], None, run_teacher=True)
    destroy_parallel()
    return out


def forward_step_section() -> dict:
    """loss_func semantics on TP=2: ft vs megatron's CE, every method vs the float64 reference (parent)."""
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, unwrap

    out = {}
    layout = initialize_parallel(2, 1, seed=3)
    tp_group = layout.groups.tp
    batch = microbatch(1)
    tokens, pos, labels, mask = batch["tokens"], batch["position_ids"], batch["labels"], batch["loss_mask"]

    # ft on an unpadded vocabulary (128) is exactly megatron-core's own GPTModel(labels=...) loss.
    ft = build(layout, 2, 1, with_teacher=False)
    deterministic_init(ft)
    ft_model = unwrap(ft[0])
    step = forward_step(layout, "ft", vocab_size=128)
    output, loss_func = step(iter([batch]), ft[0])
    loss, num_tokens, reports = loss_func(output)
    with torch.no_grad():
        megatron_loss = (ft_model.student(tokens, pos, None, labels=labels) * mask).sum()
    out["ft_vs_megatron"] = (float(loss.detach()), float(megatron_loss))
    out["ft_num_tokens"] = (int(num_tokens), float(mask.sum()), str(num_tokens.dtype))
    out["ft_reports"] = {k: v.tolist() for k, v in reports.items()}
    out["ft_report_dtypes"] = sorted({str(v.dtype) for v in reports.values()})
    out["ft_loss_requires_grad"] = loss.requires_grad

    # Every method on the same logits (padded vocab 100 -> 128), with half the labels set to the teacher's
    # argmax so that both teacher-right and teacher-wrong tokens occur.
    chunks = build(layout, 2, 1)
    deterministic_init(chunks)
    mft = unwrap(chunks[0])
    with torch.no_grad():
        _, teacher_logits = mft(tokens, pos, None, run_teacher=True)
    argmax = gather_vocab(teacher_logits, tp_group)[..., :VOCAB].argmax(-1)
    crafted = labels.clone()
    crafted[:, ::2] = argmax[:, ::2]
    per_method = {}
    for method in ("mft", "kd", "mft_incorrect_only", "ft"):
        step = forward_step(layout, method)
        run_teacher = step.runs_teacher
        s, t = mft(tokens, pos, None, run_teacher=run_teacher)
        loss, num_tokens, reports = step.loss_func(crafted, mask, (s, t))
        loss.backward()
        per_method[method] = {"reports": {k: v.tolist() for k, v in reports.items()}, "loss": float(loss.detach()),
                              "runs_teacher": run_teacher}
    # kd_ce on a sharpened teacher (identical weights would make its distillation term 0): loss and the
    # gradient w.r.t. the student logits, checked in the parent against the float64 references.
    mft.zero_grad()
    s, t = mft(tokens, pos, None, run_teacher=True)
    s.retain_grad()
    sharp = t * 1.7
    kd_ce = forward_step(layout, "kd_ce")
    loss, _, reports = kd_ce.loss_func(crafted, mask, (s, sharp))
    loss.backward()
    out["kd_ce"] = {"loss": float(loss.detach()), "reports": {k: v.tolist() for k, v in reports.items()},
                    "student": gather_vocab(s, tp_group), "teacher": gather_vocab(sharp, tp_group),
                    "grad": gather_vocab(s.grad, tp_group)}
    # In place (the default for mft) against out of place: the student logits' buffer holds their
    # gradient after loss_func, and the model's parameter gradients are the same.
    inplace = {}
    for flag in (True, False):
        mft.zero_grad()
        s, t = mft(tokens, pos, None, run_teacher=True)
        s.retain_grad()
        before = s.detach().clone()
        step = forward_step(layout, "mft", inplace_grad=flag)
        loss, _, _ = step.loss_func(crafted, mask, (s, t))
        overwritten = not torch.equal(s.detach(), before)
        loss.backward()
        inplace[flag] = {"loss": float(loss.detach()), "overwritten": overwritten,
                         "holds_grad": torch.equal(s.detach(), s.grad), "logits_grad": gather_vocab(s.grad, tp_group),
                         "param_grads": [p.grad.clone() for p in mft.parameters() if p.grad is not None]}
    out["inplace"] = inplace
    mft.zero_grad()
    s, t = mft(tokens, pos, None, run_teacher=True)
    out["methods"] = per_method
    out["logits"] = {"student": gather_vocab(s, tp_group), "teacher": gather_vocab(t, tp_group), "labels": crafted,
                     "loss_mask": mask}
    evaluate = forward_step(layout, "mft", evaluate=True)
    out["evaluate"] = {"runs_teacher": evaluate.runs_teacher,
                       "reports": {k: v.tolist() for k, v in
                                   evaluate.loss_func(crafted, mask, (s, None))[2].items()}}
    destroy_parallel()
    return out


def methods_section() -> dict:
    """Every method trains one Adam step and evaluates, on TP=2 x PP=2 (1F1B with teacher activations)."""
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, run_microbatches, train_step, wrap_with_ddp
    from nemo_mft.methods import METHODS

    out = {}
    layout = initialize_parallel(2, 2, seed=3)
    for method in METHODS:
        step = forward_step(layout, method)
        evaluate = forward_step(layout, method, evaluate=True)
        chunks = build(layout, 2, 2, with_teacher=step.objective.uses_teacher)
        deterministic_init(chunks)
        ddp = wrap_with_ddp(chunks, layout.groups)
        adam = optimizer(ddp, layout, lr=1e-2, clip_grad=1.0)
        kwargs = dict(groups=layout.groups, num_microbatches=NUM_MB // layout.dp_size, seq_length=SEQ,
                      micro_batch_size=MBS)
        for chunk in ddp:
            chunk.eval()
        before = run_microbatches(evaluate, step_iterator(0, layout.dp_rank, layout.dp_size), ddp,
                                  forward_only=True, **kwargs)
        result = train_step(step, step_iterator(0, layout.dp_rank, layout.dp_size), ddp, adam, **kwargs)
        for chunk in ddp:
            chunk.eval()
        after = run_microbatches(evaluate, step_iterator(0, layout.dp_rank, layout.dp_size), ddp,
                                 forward_only=True, **kwargs)
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (before, result.reports, after))
        out[method] = {"eval_before": before, "train": result.reports, "eval_after": after,
                       "grad_norm": result.grad_norm, "ok": result.update_successful,
                       "same_on_all_ranks": all(e == everyone[0] for e in everyone)}
    destroy_parallel()
    return out


def l2_init_section() -> dict:
    """L2-to-init on TP=2 x DP=2: one SGD step with and without it, the anchors shifted by L2_SHIFT so that
    theta - theta_0 = L2_SHIFT; the parent checks the difference is -lr * weight * L2_SHIFT everywhere."""
    from nemo_mft.megatron import L2ToInitial, destroy_parallel, initialize_parallel, train_step, unwrap, wrap_with_ddp

    layout = initialize_parallel(2, 1, seed=3)
    step = forward_step(layout, "ft")
    kwargs = dict(groups=layout.groups, num_microbatches=NUM_MB // layout.dp_size, seq_length=SEQ,
                  micro_batch_size=MBS)
    after = {}
    for name, weight in (("plain", 0.0), ("l2", L2_WEIGHT)):
        chunks = build(layout, 2, 1, with_teacher=False)
        deterministic_init(chunks)
        regularizer = L2ToInitial(chunks, weight)
        for _, anchor in regularizer.pairs:
            anchor.sub_(L2_SHIFT)
        ddp = wrap_with_ddp(chunks, layout.groups)
        sgd = optimizer(ddp, layout, optimizer="sgd", lr=L2_LR, clip_grad=0.0)
        train_step(step, step_iterator(0, layout.dp_rank, layout.dp_size), ddp, sgd, regularizer=regularizer,
                   **kwargs)
        after[name] = [p.detach().clone() for p in unwrap(ddp[0]).student.parameters()]
    expected = -L2_LR * L2_WEIGHT * L2_SHIFT
    deviation = max(float((l2 - plain - expected).abs().max()) for l2, plain in zip(after["l2"], after["plain"]))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, deviation)

    # With a teacher, theta_0 is the teacher's own storage (no copy), and must equal the student.
    mft = build(layout, 2, 1)
    deterministic_init(mft)
    model = unwrap(mft[0])
    shared = L2ToInitial(mft, L2_WEIGHT)
    teacher_ptrs = {p.data_ptr() for p in model.teacher.parameters()}
    out = {"max_deviation": max(everyone), "expected_step": expected,
           "num_pairs": len(shared.pairs), "num_params": sum(1 for _ in model.student.parameters()),
           "anchors_are_teacher": _all(all(a.data_ptr() in teacher_ptrs for _, a in shared.pairs))}
    with torch.no_grad():
        next(model.student.parameters()).add_(1.0)
    out["moved_student"] = _catch(L2ToInitial, mft, L2_WEIGHT)
    destroy_parallel()
    return out


def _manual_reference_grads(chunks, step, layout) -> dict:
    """Step-0 gradient the textbook way: autograd.grad of this DP rank's loss sums, all-reduced over DP
    and divided by the global token count (what per-token normalization must produce). PP=1 only."""
    from nemo_mft.megatron import unwrap

    mft = unwrap(chunks[0])
    params = list(mft.parameters())
    total = [torch.zeros_like(p) for p in params]
    tokens = torch.zeros((), dtype=torch.float64)
    for batch in step_iterator(0, layout.dp_rank, layout.dp_size):
        s, t = mft(batch["tokens"], batch["position_ids"], None, run_teacher=True)
        sums = step.compute(s, t, batch["labels"], batch["loss_mask"])
        grads = torch.autograd.grad(sums.loss, params, allow_unused=True)
        total = [acc + (g if g is not None else 0) for acc, g in zip(total, grads)]
        tokens += float(batch["loss_mask"].sum())
    group = layout.groups.dp
    for g in total:
        dist.all_reduce(g, group=group)
    dist.all_reduce(tokens, group=group)
    by_id = {id(p): g / tokens for p, g in zip(params, total)}
    full, _ = gather_full(chunks, lambda p: by_id[id(p)])
    return full


def equivalence_section() -> dict:
    """3 SGD steps (clipped) of MFT in every layout of LAYOUTS on the same data and weights."""
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, train_step, unwrap, wrap_with_ddp

    results = {}
    for tp, pp, sp in LAYOUTS:
        layout = initialize_parallel(tp, pp, seed=7)
        chunks = build(layout, tp, pp, sequence_parallel=sp)
        deterministic_init(chunks, seed=11)
        teacher = unwrap(chunks[0]).teacher
        teacher_before = {k: v.clone() for k, v in teacher.state_dict().items() if isinstance(v, torch.Tensor)}
        inner = forward_step(layout, "mft")
        manual = _manual_reference_grads(chunks, inner, layout) if pp == 1 and tp == 1 else None
        ddp = wrap_with_ddp(chunks, layout.groups)
        sgd = optimizer(ddp, layout, optimizer="sgd", lr=0.5, clip_grad=1.0)
        step = RecordingStep(inner, capture=(tp, pp, sp) == (2, 2, False))
        steps, grads, replica = [], [], 0.0
        for index in range(STEPS):
            step.capture = step.capture and index == 0
            result = train_step(step, step_iterator(index, layout.dp_rank, layout.dp_size), ddp, sgd,
                                groups=layout.groups, num_microbatches=NUM_MB // layout.dp_size, seq_length=SEQ,
                                micro_batch_size=MBS)
            full, diff = gather_full(chunks, lambda p: p.main_grad)  # after clipping (in place)
            steps.append({"reports": result.reports, "grad_norm": result.grad_norm, "ok": result.update_successful})
            grads.append(full)
            replica = max(replica, diff)
        weights, diff = gather_full(chunks, lambda p: p)
        records, record_diff = all_records(step)
        captured = [None] * dist.get_world_size()
        dist.all_gather_object(captured, step.captured)
        results[(tp, pp, sp)] = {
            "steps": steps, "grads": grads, "weights": weights, "records": records, "manual_grads": manual,
            "replica_diff": max(replica, diff, record_diff),
            "teacher_unchanged": _all(all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items()
                                          if isinstance(v, torch.Tensor))),
            "captured": next((c for c in captured if c), {}),
        }
        destroy_parallel()
    return results
