"""LoRA adapters inside the shared 4-rank job (megatron_harness.run_all): layouts, teacher, merge reference.

For every layout of LAYOUTS: the tiny GPT with deterministic base weights and LoRA (r=4, alpha=8) on all
four targets, B set to deterministic non-zero values (with the initial B = 0 the gradient of A vanishes, so
its path would go untested), then 2 SGD steps of MFT where the teacher is the base model (adapters off).
Recorded: per-micro-batch losses, the adapters' gradients and weights gathered by global key, the base
weights before/after, what the optimizer holds, and on the first step the full-vocabulary logits.
Reference (TP=1, PP=1, same process): the same GPT without adapters, its weights merged W + alpha/r B A:
its logits must equal the LoRA student's; without merging they must equal the teacher's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_harness import (LAYOUTS, MBS, NUM_MB, SEQ, RecordingStep, all_records, build, deterministic_init,
                              forward_step, gather_full, gather_vocab, microbatch, optimizer, param_shards,
                              step_iterator)

RANK, ALPHA = 4, 8.0
ADAPTER_STEPS = 2


def _lora():
    from nemo_mft.peft import LoRAConfig

    return LoRAConfig(dim=RANK, alpha=ALPHA)


@torch.no_grad()
def _set_b(chunks) -> None:
    """Deterministic non-zero B (global tensors by key, sliced for this rank)."""
    import zlib

    for chunk in chunks:
        for key, shape, where, param in param_shards(chunk, "trained"):
            if key.endswith("lora_b"):
                g = torch.Generator().manual_seed(31 + zlib.crc32(key.encode()))
                param.copy_((0.2 * torch.randn(shape, generator=g))[where])


def _logits(chunks, layout, batch, *, adapters_off: bool = False):
    """Full-vocabulary student logits [B, S, V] of ``batch`` (TP=1, PP=1 only)."""
    from nemo_mft.megatron import unwrap

    model = unwrap(chunks[0])
    with torch.no_grad():
        if adapters_off:
            with model.adapters.disabled():
                out, _ = model(batch["tokens"], batch["position_ids"], run_teacher=False)
        else:
            out, teacher = model(batch["tokens"], batch["position_ids"], run_teacher=True)
    return gather_vocab(out, layout.groups.tp), None if adapters_off else gather_vocab(teacher, layout.groups.tp)


@torch.no_grad()
def _merged_reference(layout, lora_chunks) -> dict:
    """A plain GPT with the base weights + alpha/r B A merged into the four targets; its logits on micro-batch 0."""
    from nemo_mft.megatron import unwrap

    plain = build(layout, with_teacher=False)
    deterministic_init(plain)
    student = unwrap(plain[0]).student
    for key, adapter in unwrap(lora_chunks[0]).adapters.items():
        base = student.get_submodule(key)
        base.weight.add_(ALPHA / RANK * adapter.lora_b @ adapter.lora_a)
    batch = microbatch(0)
    merged, _ = unwrap(plain[0])(batch["tokens"], batch["position_ids"], run_teacher=False)
    return {"merged": merged.clone()}


def adapters_section() -> dict:
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, train_step, unwrap, wrap_with_ddp

    results = {}
    for tp, pp, sp in LAYOUTS:
        layout = initialize_parallel(tp, pp, seed=7)
        chunks = build(layout, tp, pp, lora=_lora())
        model = unwrap(chunks[0])
        deterministic_init(chunks, which="base")
        zero_b = all(float(p.abs().max()) == 0.0 for k, _, _, p in param_shards(chunks[0]) if k.endswith("lora_b"))
        out = {"zero_b_at_start": zero_b, "has_separate_teacher": model.teacher is not None}
        if (tp, pp) == (1, 1):  # B = 0: the student is the base model, exactly
            student, teacher = _logits(chunks, layout, microbatch(0))
            out["step0_student_equals_teacher"] = torch.equal(student, teacher)
        _set_b(chunks)
        if (tp, pp) == (1, 1):
            student, teacher = _logits(chunks, layout, microbatch(0))
            base_only, _ = _logits(chunks, layout, microbatch(0), adapters_off=True)
            out.update(_merged_reference(layout, chunks))
            out.update({"student": student, "teacher": teacher, "base_only": base_only})
        base_before = [p.detach().clone() for _, _, _, p in param_shards(chunks[0], "base")]  # keys repeat per layer
        ddp = wrap_with_ddp(chunks, layout.groups)
        sgd = optimizer(ddp, layout, optimizer="sgd", lr=0.5, clip_grad=1.0)
        optimized = {id(p) for group in sgd.param_groups for p in group["params"]}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        adapter_params = {id(p) for p in model.adapters.parameters()}
        step = RecordingStep(forward_step(layout, "mft"))
        grads, reports = [], []
        for index in range(ADAPTER_STEPS):
            result = train_step(step, step_iterator(index, layout.dp_rank, layout.dp_size), ddp, sgd,
                                groups=layout.groups, num_microbatches=NUM_MB // layout.dp_size, seq_length=SEQ,
                                micro_batch_size=MBS)
            full, _ = gather_full(chunks, lambda p: p.main_grad)
            grads.append(full)
            reports.append(result.reports)
        weights, replica_diff = gather_full(chunks, lambda p: p)
        records, record_diff = all_records(step)
        base_after = [p for _, _, _, p in param_shards(chunks[0], "base")]
        base_same = len(base_after) == len(base_before) and all(map(torch.equal, base_before, base_after))
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (base_same, optimized == adapter_params == trainable))
        out.update({
            "grads": grads, "weights": weights, "records": records, "reports": reports,
            "replica_diff": max(replica_diff, record_diff),
            "base_unchanged": all(e[0] for e in everyone),
            "only_adapters_train": all(e[1] for e in everyone),
            "adapter_keys": sorted(weights),
        })
        results[(tp, pp, sp)] = out
        destroy_parallel()
    return results
