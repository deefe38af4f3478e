"""One finetuning run, start to end: checks, set-up, the training loop, evaluation, checkpoints, summary.

Order (every rank):
1. Checks that need nothing distributed: parallel layout vs ``WORLD_SIZE``, checkpoint / log directories,
   data (file:line errors), tokenizer. Any failure raises :class:`SetupError` before a process group or a
   model exists.
2. Process groups (gloo on CPU, nccl on GPU), the model chunks of this pipeline stage (student + frozen
   teacher), the pretrained weights (then teacher := student), megatron DDP, optimizer, LR scheduler,
   and, when resuming, model / optimizer / scheduler / RNG / iteration / data position.
3. Iterations 1..train_iters. Iteration ``i`` consumes global batch ``i - 1`` of the seeded data stream.
   Evaluation at iteration 0 (the base model, skipped on resume: the base perplexities come from the
   checkpoint), every ``evaluation.eval_interval`` and at the end; a checkpoint every
   ``checkpoint.save_interval``, at ``train.exit_interval`` and at the end.
4. summary.json and curves.png in ``logger.log_dir`` (only when the last iteration was reached).

metrics.jsonl gets one training record per ``logger.log_interval`` iterations (the values of that
iteration; ``tokens_per_s`` over the interval) and one evaluation record per evaluation.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import torch

from nemo_mft.config import builders
from nemo_mft.config.schema import FinetuneConfig
from nemo_mft.data import MicroBatchSampler, num_microbatches, train_micro_batches
from nemo_mft.training.checkpointing import load_checkpoint, load_pretrained_weights, save_checkpoint
from nemo_mft.training.evaluation import Evaluator
from nemo_mft.training.inputs import RunData, load_run_data
from nemo_mft.training.reporting import Reporter, finite_or_none
from nemo_mft.training.run_dir import RunPlan, plan_run, write_run_files, write_summary
from nemo_mft.training.scheduler import build_scheduler
from nemo_mft.training.specialization import Perplexities

logger = logging.getLogger("nemo_mft")


class SetupError(ValueError):
    """The run cannot start: bad recipe value, layout, directory or data. Raised before anything is built."""


def world_size_from_env() -> int:
    """The number of processes this run will have: the live process group's, else torchrun's WORLD_SIZE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_run(config: FinetuneConfig) -> tuple[RunPlan, RunData, int]:
    """Step 1 of the module docstring: ``(plan, data, dp_size)`` or :class:`SetupError`."""
    try:
        dp_size = config.check_world(world_size_from_env())
        plan = plan_run(config)
        data = load_run_data(config)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise SetupError(str(err)) from err
    return plan, data, dp_size


def _configure_logging(rank: int) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format=f"[%(asctime)s rank {rank}] %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    logging.getLogger("nemo_mft").setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def run_finetune(config: FinetuneConfig, resolved_yaml: Optional[str] = None) -> Optional[dict]:
    """Run the recipe; returns the summary on global rank 0 (None elsewhere, or when exiting early).

    ``resolved_yaml`` is written to ``log_dir/config.yaml`` (the CLI passes the resolved Hydra config).
    torch.distributed is initialized here when it is not already (and torn down again at the end). On a
    machine without CUDA, call it inside `nemo_mft.megatron.megatron_on_cpu` (the CLI does).
    """
    plan, data, _ = check_run(config)

    import torch.distributed as dist

    from nemo_mft import megatron as nm

    owns_process_group = not dist.is_initialized()
    nm.init_distributed()
    try:
        layout = nm.initialize_parallel(config.model.tensor_model_parallel_size,
                                        config.model.pipeline_model_parallel_size, seed=config.train.seed)
        try:
            return _run(config, plan, data, layout, resolved_yaml)
        finally:
            nm.destroy_parallel()
    finally:
        if owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(config: FinetuneConfig, plan: RunPlan, data: RunData, layout, resolved_yaml: Optional[str]):
    from omegaconf import OmegaConf

    from nemo_mft import megatron as nm

    _configure_logging(layout.rank)
    writer = layout.rank == 0
    train_cfg, ckpt_cfg, method = config.train, config.checkpoint, config.mft.method
    seq_length, mbs, gbs = config.dataset.seq_length, train_cfg.micro_batch_size, train_cfg.global_batch_size
    if writer:
        write_run_files(config, plan, resolved_yaml or OmegaConf.to_yaml(OmegaConf.structured(config)))
        logger.info("layout tp=%d pp=%d dp=%d (world %d); %d training samples (%d of them replay), "
                    "%d validation samples, %s", layout.tp_size, layout.pp_size, layout.dp_size, layout.world_size,
                    len(data.train), data.num_replay, len(data.validation),
                    "no general-domain set" if data.general is None else f"{len(data.general)} general windows")

    # ---- model, teacher, optimizer, schedule
    groups, objective = layout.groups, config.mft.objective
    vocab_size = data.tokenizer.vocab_size
    chunks = nm.build_model(builders.transformer_config(config.model), builders.layer_spec(config.model),
                            builders.gpt_options(config.model, vocab_size=vocab_size, seq_length=seq_length),
                            groups=groups, with_teacher=objective.uses_teacher)
    if plan.pretrained is not None:
        load_pretrained_weights(plan.pretrained, chunks, vocab_size=vocab_size,
                                verify_checksums=ckpt_cfg.verify_checksums)
        nm.sync_teacher_from_student(chunks)
        logger.info("initial weights (student and teacher) from %s", plan.pretrained)
    else:
        logger.warning("checkpoint.pretrained_checkpoint is null: the model (and its teacher) start from a "
                       "seeded random initialization (seed %d), i.e. training from scratch; to finetune a base "
                       "model, set checkpoint.pretrained_checkpoint", train_cfg.seed)
    # theta_0 of the L2-to-init baseline: the initial weights, captured before a resume replaces them.
    regularizer = nm.L2ToInitial(chunks, config.mft.l2_init_weight) if config.mft.l2_init_weight > 0 else None
    chunks = nm.wrap_with_ddp(chunks, groups)
    optimizer = nm.build_optimizer(chunks, builders.optimizer_config(config.optimizer, config.model), groups)
    scheduler = build_scheduler(optimizer, config)

    start_iteration, base, prior_time = 0, None, 0.0
    if plan.resume_from is not None:
        state = load_checkpoint(plan.resume_from, chunks, optimizer, scheduler, layout, vocab_size=vocab_size,
                                verify_checksums=ckpt_cfg.verify_checksums)
        start_iteration, prior_time = int(state["iteration"]), float(state.get("train_time_s", 0.0))
        base = Perplexities(**{k: float("nan") if v is None else v for k, v in state["base"].items()})
        if int(state["consumed_samples"]) != start_iteration * gbs:
            raise SetupError(f"{plan.resume_from}: consumed_samples {state['consumed_samples']} does not match "
                             f"iteration {start_iteration} x train.global_batch_size {gbs}; resuming with a "
                             "different global batch size is not supported")
        logger.info("resumed from %s at iteration %d", plan.resume_from, start_iteration)

    # ---- data, steps, evaluation
    dp_size = layout.dp_size
    n_micro = num_microbatches(gbs, mbs, dp_size)
    sampler = MicroBatchSampler(len(data.train), mbs, layout.dp_rank, dp_size, train_cfg.seed)
    batches = train_micro_batches(data.train, sampler, consumed_samples=start_iteration * gbs)
    train_step_fn = nm.make_forward_step(objective, vocab_size=vocab_size, tp_group=groups.tp)
    evaluator = Evaluator(nm.make_forward_step(objective, vocab_size=vocab_size, tp_group=groups.tp, evaluate=True),
                          data.validation, data.general, groups=groups, micro_batch_size=mbs, seq_length=seq_length)
    reporter = Reporter(writer=writer, log_dir=config.logger.log_dir, train_iters=train_cfg.train_iters,
                        start_iteration=start_iteration, resuming=plan.resume_from is not None,
                        tensorboard=config.logger.tensorboard, progress_bar=config.logger.progress_bar,
                        title=config.mft.label)

    if base is None:
        base = evaluator.evaluate(chunks)
        reporter.evaluation(0, base, base)

    def checkpoint(iteration: int, elapsed: float) -> str:
        # The common part of a checkpoint must be the same on every rank: take rank 0's clock.
        box = [elapsed]
        torch.distributed.broadcast_object_list(box, src=0)
        elapsed = box[0]
        base_ppl = {"spec_ppl": finite_or_none(base.spec_ppl), "gen_ppl": finite_or_none(base.gen_ppl)}
        common = {"consumed_samples": iteration * gbs, "base": base_ppl, "train_time_s": elapsed, "method": method}
        return save_checkpoint(ckpt_cfg.save, iteration, chunks, optimizer, scheduler, layout, common=common,
                               keep_last=ckpt_cfg.keep_last)

    # ---- the loop
    last_saved: Optional[str] = plan.resume_from
    latest_eval: Optional[dict] = None
    iteration = start_iteration
    loop_start = interval_start = time.perf_counter()
    interval_iters = 0
    try:
        while iteration < train_cfg.train_iters:
            lr = _lr(optimizer)
            result = nm.train_step(train_step_fn, batches, chunks, optimizer, groups=groups, num_microbatches=n_micro,
                                   seq_length=seq_length, micro_batch_size=mbs, regularizer=regularizer)
            scheduler.step(1)
            iteration += 1
            interval_iters += 1
            is_last = iteration == train_cfg.train_iters
            exiting = bool(train_cfg.exit_interval) and iteration % train_cfg.exit_interval == 0 and not is_last
            log_now = iteration % config.logger.log_interval == 0 or is_last or exiting
            tokens_per_s = 0.0
            if log_now:
                elapsed = time.perf_counter() - interval_start
                tokens_per_s = interval_iters * gbs * seq_length / max(elapsed, 1e-9)
                interval_start, interval_iters = time.perf_counter(), 0
            reporter.train_step(iteration, result.reports, lr=lr, grad_norm=float(result.grad_norm),
                                tokens_per_s=tokens_per_s, consumed_samples=iteration * gbs,
                                skipped=not result.update_successful, log=log_now)

            eval_every = config.evaluation.eval_interval
            if is_last or (eval_every and iteration % eval_every == 0):
                latest_eval = reporter.evaluation(iteration, base, evaluator.evaluate(chunks))
            save_every = ckpt_cfg.save_interval
            if ckpt_cfg.save and (is_last or exiting or (save_every and iteration % save_every == 0)):
                last_saved = checkpoint(iteration, prior_time + time.perf_counter() - loop_start)
                logger.info("saved checkpoint %s", last_saved)
            if exiting:
                logger.info("train.exit_interval: stopping after iteration %d; %s", iteration,
                            f"continue with checkpoint.load={ckpt_cfg.save}" if ckpt_cfg.save
                            else "no checkpoint.save, so this run cannot be continued")
                return None
        if latest_eval is None:  # resumed at the last iteration: nothing ran, evaluate once (collective)
            latest_eval = reporter.evaluation(iteration, base, evaluator.evaluate(chunks))
    finally:
        reporter.close()

    train_time = prior_time + time.perf_counter() - loop_start
    if not writer:
        return None
    final = latest_eval
    summary = {
        "method": method,
        "iterations": iteration,
        "base": {"spec_ppl": base.spec_ppl, "gen_ppl": finite_or_none(base.gen_ppl)},
        "final": {key: (finite_or_none(final[key]) if final[key] is not None else None)
                  for key in ("spec_ppl", "gen_ppl", "S", "DG", "DG_over_S")},
        "train_time_s": train_time,
        "checkpoint": os.path.abspath(last_saved) if last_saved else None,
    }
    write_summary(config.logger.log_dir, summary)
    return summary
