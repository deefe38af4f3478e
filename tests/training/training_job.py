"""The spawned 2-rank gloo job behind tests/training/test_checkpointing.py and test_evaluation.py.

One world serves both (process start-up costs seconds): the sections build a tiny GPT through the recipe's
builders, as the training loop does, and return plain data that the test files check.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

SEQ, VOCAB, MBS = 12, 100, 2


def _section(tp: int):
    from nemo_mft.config.schema import ModelSection

    return ModelSection(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                        make_vocab_size_divisible_by=64, tensor_model_parallel_size=tp).with_scratch_defaults()  # 128 columns at TP 1 and 2


def _build(layout, method: str = "mft"):
    from nemo_mft.config import builders
    from nemo_mft.megatron import build_model
    from nemo_mft.methods import Objective

    section = _section(layout.tp_size)
    return build_model(builders.transformer_config(section), builders.layer_spec(section),
                       builders.gpt_options(section, vocab_size=VOCAB, seq_length=SEQ), groups=layout.groups,
                       with_teacher=Objective(method=method).uses_teacher)


def _trainer(layout):
    """DDP chunks, Adam, the LR schedule and the MFT forward step of the tiny model."""
    from nemo_mft.config import builders
    from nemo_mft.config.schema import DatasetSection, FinetuneConfig, OptimizerSection, SchedulerSection
    from nemo_mft.megatron import build_optimizer, make_forward_step, wrap_with_ddp
    from nemo_mft.methods import Objective
    from nemo_mft.training.scheduler import build_scheduler

    config = FinetuneConfig(dataset=DatasetSection(dataset_root="/unused"), optimizer=OptimizerSection(lr=1e-2),
                            scheduler=SchedulerSection(lr_warmup_iters=2))
    chunks = wrap_with_ddp(_build(layout), layout.groups)
    optimizer = build_optimizer(chunks, builders.optimizer_config(config.optimizer, _section(layout.tp_size)),
                                layout.groups)
    step = make_forward_step(Objective(), vocab_size=VOCAB, tp_group=layout.groups.tp)
    return chunks, optimizer, build_scheduler(optimizer, config), step


def _batch(index: int) -> dict:
    g = torch.Generator().manual_seed(100 + index)
    tokens = torch.randint(0, VOCAB, (MBS, SEQ), generator=g)
    return {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1), "loss_mask": torch.ones(MBS, SEQ),
            "position_ids": torch.arange(SEQ).expand(MBS, SEQ).contiguous()}


def _train(chunks, optimizer, scheduler, step, layout, index: int) -> float:
    from nemo_mft.megatron import train_step

    batches = iter([_batch(10 * index + layout.dp_rank * 2 + j) for j in range(2)])
    result = train_step(step, batches, chunks, optimizer, groups=layout.groups, num_microbatches=2,
                        seq_length=SEQ, micro_batch_size=MBS)
    scheduler.step(1)
    return result.reports["loss"][0]


def _student_state(chunks) -> dict:
    from nemo_mft.megatron import unwrap

    return {k: v.detach().clone() for k, v in unwrap(chunks[0]).student.state_dict().items()
            if isinstance(v, torch.Tensor)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _all(flag: bool) -> bool:
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, bool(flag))
    return all(everyone)


def _error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except (ValueError, FileNotFoundError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def checkpoint_section(root: str) -> dict:
    """Save / latest / keep_last / exact resume on TP=2, refusals, and weights-only loading into TP=1 x DP=2."""
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, unwrap
    from nemo_mft.training import checkpointing as ck

    out = {}
    layout = initialize_parallel(2, 1, seed=5)
    chunks, optimizer, scheduler, step = _trainer(layout)
    teacher_before = {k: v.clone() for k, v in unwrap(chunks[0]).teacher.state_dict().items()
                      if isinstance(v, torch.Tensor)}
    common = {"consumed_samples": 8, "base": {"spec_ppl": 3.5, "gen_ppl": None}, "method": "mft"}
    _train(chunks, optimizer, scheduler, step, layout, 0)
    first = ck.save_checkpoint(root, 1, chunks, optimizer, scheduler, layout, common=common, keep_last=1)
    _train(chunks, optimizer, scheduler, step, layout, 1)
    if layout.rank == 0:  # a stale directory left by an interrupted save of iteration 2
        os.makedirs(ck.iteration_dir(root, 2))
        open(os.path.join(ck.iteration_dir(root, 2), "partial.distcp"), "w").close()
    dist.barrier()
    second = ck.save_checkpoint(root, 2, chunks, optimizer, scheduler, layout, common=common, keep_last=1)
    out["paths"] = [os.path.basename(first), os.path.basename(second)]
    out["saved_iterations"] = ck.saved_iterations(root)
    out["tracker"] = ck.read_tracker(root)
    out["resolved"] = os.path.basename(ck.resolve_checkpoint(root))
    out["stale_file_gone"] = not os.path.exists(os.path.join(second, "partial.distcp"))
    saved_state, saved_lr = _student_state(chunks), optimizer.param_groups[0]["lr"]
    rng_after_save = torch.rand(3)

    # The run goes on: the next step's loss and weights are the reference for the resumed copy.
    continued_loss = _train(chunks, optimizer, scheduler, step, layout, 2)
    continued_state = _student_state(chunks)

    # A resumed run, as the loop builds it: the base weights (here: the first run's teacher) become the
    # student and the teacher, then the checkpoint replaces the student, optimizer, schedule and RNG.
    fresh, fresh_opt, fresh_sched, fresh_step = _trainer(layout)
    out["fresh_differs"] = _all(not _same(_student_state(fresh), saved_state))
    unwrap(fresh[0]).student.load_state_dict(teacher_before, strict=False)
    unwrap(fresh[0]).sync_teacher()
    state = ck.load_checkpoint(ck.resolve_checkpoint(root), fresh, fresh_opt, fresh_sched, layout)
    out["common"] = {k: state[k] for k in ("iteration", "consumed_samples", "base", "method", "layout")}
    out["weights_restored"] = _all(_same(_student_state(fresh), saved_state))
    out["lr_restored"] = fresh_opt.param_groups[0]["lr"] == saved_lr
    out["rng_restored"] = _all(torch.equal(torch.rand(3), rng_after_save))
    resumed_loss = _train(fresh, fresh_opt, fresh_sched, fresh_step, layout, 2)
    out["resume_exact"] = (resumed_loss == continued_loss
                           and _all(_same(_student_state(fresh), continued_state)))
    out["teacher_unchanged"] = _all(all(torch.equal(v, teacher_before[k]) for k, v in
                                        unwrap(chunks[0]).teacher.state_dict().items() if isinstance(v, torch.Tensor)))
    # The full (TP-gathered) embedding of the checkpoint, for the weights-only load below.
    saved_embedding = saved_state["embedding.word_embeddings.weight"]
    parts = [torch.empty_like(saved_embedding) for _ in range(layout.tp_size)]
    dist.all_gather(parts, saved_embedding.contiguous(), group=layout.groups.tp)
    full_saved_embedding = torch.cat(parts, dim=0)

    # Refusals.
    empty, broken, garbage = (os.path.join(root, name) for name in ("empty", "broken", "garbage"))
    if layout.rank == 0:
        for folder, tracker in ((empty, None), (broken, "7"), (garbage, "latest")):
            os.makedirs(folder)
            if tracker is not None:
                with open(os.path.join(folder, ck.TRACKER_FILE), "w") as handle:
                    handle.write(tracker + "\n")
    dist.barrier()
    out["missing_pretrained"] = _error(ck.load_pretrained_weights, empty, fresh)
    out["tracker_to_missing_iteration"] = _error(ck.resolve_checkpoint, broken)
    out["garbage_tracker"] = _error(ck.resolve_checkpoint, garbage)
    out["nothing_here"] = ck.resolve_checkpoint(empty)
    out["not_a_directory"] = ck.resolve_checkpoint(os.path.join(root, ck.TRACKER_FILE))
    destroy_parallel()

    # Weights only, into another layout (TP=1, DP=2): the full tensors of the TP=2 checkpoint.
    layout = initialize_parallel(1, 1, seed=9)
    single = _build(layout)
    ck.load_pretrained_weights(root, single)
    model = unwrap(single[0])
    out["pretrained_into_tp1"] = _all(torch.equal(model.student.embedding.word_embeddings.weight.detach(),
                                                  full_saved_embedding))
    model.sync_teacher()
    out["teacher_synced"] = _all(torch.equal(model.teacher.embedding.word_embeddings.weight, full_saved_embedding))
    destroy_parallel()
    return out


def evaluation_section(root: str) -> dict:
    """Perplexity of the Evaluator on TP=1 x DP=2 vs exp(mean NLL) computed by hand from the model's logits."""
    from nemo_mft.data import TokenizedDataset
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, make_forward_step, unwrap
    from nemo_mft.methods import Objective
    from nemo_mft.training.evaluation import Evaluator

    layout = initialize_parallel(1, 1, seed=5)
    chunks = _build(layout)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (5, SEQ), generator=g)  # 5 samples: DP=2 x MBS=2 leaves padding
    loss_mask = (torch.rand(5, SEQ, generator=g) > 0.3).float()
    loss_mask[2] = 0.0  # a sample without loss tokens
    dataset = TokenizedDataset(tokens=tokens, labels=torch.roll(tokens, -1, dims=1), loss_mask=loss_mask)
    general = TokenizedDataset(tokens=tokens[:3], labels=torch.roll(tokens[:3], -1, dims=1),
                               loss_mask=torch.ones(3, SEQ))
    evaluate = make_forward_step(Objective(), vocab_size=VOCAB, tp_group=layout.groups.tp, evaluate=True)
    evaluator = Evaluator(evaluate, dataset, general, groups=layout.groups, micro_batch_size=MBS, seq_length=SEQ)
    ppl = evaluator.evaluate(chunks)
    model = unwrap(chunks[0])
    out = {"spec_ppl": ppl.spec_ppl, "gen_ppl": ppl.gen_ppl, "training_mode_restored": model.training}
    with torch.no_grad():
        model.eval()
        logits = model.student(tokens, torch.arange(SEQ).expand(5, SEQ), None)[..., :VOCAB].double()
    out["logits"], out["dataset"] = logits, (dataset.labels, dataset.loss_mask, general.labels)
    out["no_general"] = Evaluator(evaluate, dataset, None, groups=layout.groups, micro_batch_size=MBS,
                                  seq_length=SEQ).evaluate(chunks).gen_ppl
    destroy_parallel()
    return out


def run_all(rank: int, world_size: int, root: str) -> dict:
    from nemo_mft.megatron import megatron_on_cpu

    with megatron_on_cpu():
        return {"checkpoint": checkpoint_section(os.path.join(root, "ckpt")),
                "evaluation": evaluation_section(root)}
