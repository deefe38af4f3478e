"""One finetuning run, start to end: checks, set-up, the training loop, evaluation, checkpoints, summary.

Order (every rank):
1. Checks that need nothing distributed: parallel layout vs ``WORLD_SIZE``, options this machine cannot
   run, checkpoint / log directories, data (file:line errors), tokenizer and, on resume, that the recipe
   still describes the checkpoint's training problem (`resume_check`). Any failure raises
   :class:`SetupError` before a process group or a model exists, and before anything is written.
2. Process groups (gloo on CPU, nccl on GPU), the model chunks of this pipeline stage (student + frozen
   teacher), the pretrained weights (then teacher := student), megatron DDP, optimizer, LR scheduler,
   and, when resuming, model / optimizer / scheduler / RNG / iteration / data position. Only then does
   global rank 0 lock the run's directories and write to them.
3. Iterations 1..train_iters. Iteration ``i`` consumes global batch ``i - 1`` of the seeded data stream.
   Evaluation at iteration 0 (the base model, skipped on resume: the base perplexities come from the
   checkpoint), every ``evaluation.eval_interval`` and at the end; a checkpoint every
   ``checkpoint.save_interval``, at ``train.exit_interval`` and at the end. A diverged iteration
   (`guards.DivergenceGuard`) stops the run before any checkpoint is written from it; SIGINT / SIGTERM stop
   it after the current iteration, with a checkpoint when ``checkpoint.save`` is set
   (:class:`RunInterrupted`).
4. summary.json and curves.png in ``logger.log_dir`` (only when the last iteration was reached).

metrics.jsonl gets one training record per ``logger.log_interval`` iterations (the values of that
iteration; ``tokens_per_s`` over the interval) and one evaluation record per evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from nemo_mft.config import builders
from nemo_mft.config.schema import FinetuneConfig
from nemo_mft.data import MicroBatchSampler, num_microbatches, train_micro_batches
from nemo_mft.training.base_model import BaseModel, content_fingerprint, load_base_weights, resolve_base_model
from nemo_mft.training.checkpointing import load_checkpoint, read_common_state, save_checkpoint
from nemo_mft.training.evaluation import Evaluator
from nemo_mft.training.guards import DirectoryLock, DivergenceGuard, RunFailed, StopSignals, TrainingDiverged
from nemo_mft.training.inputs import RunData, load_run_data
from nemo_mft.training.reporting import Reporter, finite_or_none
from nemo_mft.training.resume_check import changed_keys, fingerprint
from nemo_mft.training.run_dir import RunPlan, plan_run, write_run_files, write_summary
from nemo_mft.training.scheduler import build_scheduler
from nemo_mft.training.specialization import Perplexities

logger = logging.getLogger("nemo_mft")

__all__ = ["RunFailed", "SetupError", "TrainingDiverged", "RunInterrupted", "CheckedRun", "check_run", "run_finetune"]


class SetupError(RunFailed):
    """The run cannot start: bad recipe value, layout, directory or data. Raised before anything is built."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after ``iteration``; ``checkpoint`` is the checkpoint that resumes
    it (saved at the stop), or None when the run saves none (``checkpoint.save`` unset)."""

    def __init__(self, signum: int, iteration: int, checkpoint: Optional[str]) -> None:
        super().__init__(f"stopped by signal {signum} after iteration {iteration}")
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint


def world_size_from_env() -> int:
    """The number of processes this run will have: the live process group's, else torchrun's WORLD_SIZE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _check_machine(config: FinetuneConfig) -> None:
    """Options this machine cannot run, found before anything is built."""
    if config.mft.impl == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("mft.impl=triton runs the fused kernels on a CUDA GPU, and this machine has none; use "
                         "mft.impl=auto (Triton on GPUs, PyTorch elsewhere) or mft.impl=torch")
    if config.model.params_dtype == "bf16" and not torch.cuda.is_available():
        raise ValueError("model.params_dtype=bf16 needs a CUDA GPU (megatron-core's mixed-precision optimizer "
                         "takes CUDA tensors only); use model.params_dtype=fp32 on a CPU")


def _check_resume(config: FinetuneConfig, plan: RunPlan, current: dict) -> bool:
    """Refuse a resume whose recipe changes the training math of the checkpoint (`resume_check`); True when
    the checkpoint stores a recipe to compare with (then the recipe's LR schedule is the checkpoint's, or a
    change the recipe allows)."""
    stored = read_common_state(plan.resume_from).get("recipe")
    if stored is None:
        logger.warning("%s stores no recipe (written by an older nemo-mft): the resumed recipe is not compared, "
                       "and the checkpoint's learning-rate schedule is kept", plan.resume_from)
        return False
    changes = changed_keys(stored, current, config.checkpoint.resume_allow_changes)
    if changes:
        raise ValueError(f"checkpoint.load={config.checkpoint.load}: this recipe changes the training of the "
                         f"checkpoint ({plan.resume_from}): " + "; ".join(changes) + ". Undo the changes, start a "
                         "new run, or allow them with checkpoint.resume_allow_changes=[KEY,...]")
    return True


@dataclass(frozen=True)
class CheckedRun:
    """What step 1 found: the recipe completed from its base model (`base_model.resolve_base_model`), the
    base model (None: from scratch), the directories' plan, the data, the recipe's fingerprint (stored in
    every checkpoint) and whether the LR schedule follows the recipe on resume (see `_check_resume`)."""

    config: FinetuneConfig
    base: Optional[BaseModel]
    plan: RunPlan
    data: RunData
    recipe: dict
    schedule_from_recipe: bool


def check_run(config: FinetuneConfig) -> CheckedRun:
    """Step 1 of the module docstring, or :class:`SetupError`."""
    try:
        config, base = resolve_base_model(config)
        config.check_world(world_size_from_env())
        _check_machine(config)
        plan = plan_run(config)
        data = load_run_data(config)
        recipe = fingerprint(config, content_fingerprint(base) if base is not None else None)
        schedule_from_recipe = plan.resume_from is None or _check_resume(config, plan, recipe)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as err:
        raise SetupError(str(err)) from err
    return CheckedRun(config, base, plan, data, recipe, schedule_from_recipe)


def _configure_logging(rank: int) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format=f"[%(asctime)s rank {rank}] %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    logging.getLogger("nemo_mft").setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def run_finetune(config: FinetuneConfig, resolved_yaml: Optional[str] = None) -> Optional[dict]:
    """Run the recipe; returns the summary on global rank 0 (None elsewhere, or when exiting early).

    ``resolved_yaml`` is written to ``log_dir/config.yaml`` (the CLI passes the resolved Hydra config);
    when the base model filled in keys of the recipe, the completed recipe is written instead.
    torch.distributed is initialized here when it is not already (and torn down again at the end). On a
    machine without CUDA, call it inside `nemo_mft.megatron.megatron_on_cpu` (the CLI does).
    """
    checked = check_run(config)
    if checked.config != config:
        resolved_yaml = None
    config = checked.config

    import torch.distributed as dist

    from nemo_mft import megatron as nm

    owns_process_group = not dist.is_initialized()
    nm.init_distributed()
    try:
        layout = nm.initialize_parallel(config.model.tensor_model_parallel_size,
                                        config.model.pipeline_model_parallel_size, seed=config.train.seed)
        try:
            return _run(config, checked, layout, resolved_yaml)
        finally:
            nm.destroy_parallel()
    finally:
        if owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def _locks(config: FinetuneConfig, writer: bool) -> contextlib.ExitStack:
    """Global rank 0 holds the run's log and checkpoint directories for the run (`guards.DirectoryLock`).

    Collective: rank 0's verdict is broadcast, so that every rank raises the same :class:`RunFailed` when
    another run holds a directory.
    """
    stack = contextlib.ExitStack()
    verdict = [None]
    if writer:
        try:
            for directory in dict.fromkeys(d for d in (config.logger.log_dir, config.checkpoint.save) if d):
                stack.enter_context(DirectoryLock(directory))
        except RunFailed as err:
            stack.close()
            verdict = [str(err)]
    torch.distributed.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise RunFailed(verdict[0])
    return stack


def _run(config: FinetuneConfig, checked: CheckedRun, layout, resolved_yaml: Optional[str]):
    from nemo_mft import megatron as nm

    plan, data = checked.plan, checked.data
    _configure_logging(layout.rank)
    writer = layout.rank == 0
    train_cfg, seq_length, gbs = config.train, config.dataset.seq_length, config.train.global_batch_size
    if writer:
        logger.info("layout tp=%d pp=%d dp=%d (world %d); %d training samples (%d of them replay), "
                    "%d validation samples, %s", layout.tp_size, layout.pp_size, layout.dp_size, layout.world_size,
                    len(data.train), data.num_replay, len(data.validation),
                    "no general-domain set" if data.general is None else f"{len(data.general)} general windows")
        for line in data.accounting_summary():
            logger.info("data: %s", line)

    # ---- model, teacher, optimizer, schedule
    groups, objective = layout.groups, config.mft.objective
    vocab_size = data.tokenizer.vocab_size
    chunks = nm.build_model(builders.transformer_config(config.model), builders.layer_spec(config.model),
                            builders.gpt_options(config.model, vocab_size=vocab_size, seq_length=seq_length),
                            groups=groups, with_teacher=objective.uses_teacher, adapt=builders.adapt(config, groups))
    # Rows that hold the model's vocabulary (>= the tokenizer's): what a checkpoint must keep when it pads
    # the vocabulary for another TP size. The loss predicts only the tokenizer's vocab_size tokens.
    vocab_rows = builders.embedding_rows(config.model, vocab_size)
    base_model = checked.base
    if base_model is not None:
        load_base_weights(base_model, chunks, groups, vocab_rows=vocab_rows,
                          verify_checksums=config.checkpoint.verify_checksums)
        logger.info("initial weights (student and teacher) from the %s", base_model.describe())
    else:
        logger.warning("checkpoint.pretrained_checkpoint is null: the model (and its teacher) start from a "
                       "seeded random initialization (seed %d), i.e. training from scratch; to finetune a base "
                       "model, set checkpoint.pretrained_checkpoint", train_cfg.seed)
    # theta_0 of the L2-to-init baseline: the initial weights, captured before a resume replaces them.
    regularizer = nm.L2ToInitial(chunks, config.mft.l2_init_weight) if config.mft.l2_init_weight > 0 else None
    chunks = nm.wrap_with_ddp(chunks, groups)
    optimizer = nm.build_optimizer(chunks, builders.optimizer_config(config.optimizer, config.model), groups)
    scheduler = build_scheduler(optimizer, config, follow_recipe=checked.schedule_from_recipe)

    start_iteration, base, prior_time, reference_ce = 0, None, 0.0, None
    if plan.resume_from is not None:
        state = load_checkpoint(plan.resume_from, chunks, optimizer, scheduler, layout, vocab_size=vocab_rows,
                                verify_checksums=config.checkpoint.verify_checksums)
        start_iteration, prior_time = int(state["iteration"]), float(state.get("train_time_s", 0.0))
        base = Perplexities(**{k: float("nan") if v is None else v for k, v in state["base"].items()})
        reference_ce = state.get("initial_student_ce")
        if int(state["consumed_samples"]) != start_iteration * gbs:
            raise SetupError(f"{plan.resume_from}: consumed_samples {state['consumed_samples']} does not match "
                             f"iteration {start_iteration} x train.global_batch_size {gbs}; resuming with a "
                             "different global batch size is not supported")
        logger.info("resumed from %s at iteration %d", plan.resume_from, start_iteration)

    # Everything that can refuse the run has run: now lock and write (a refused run changes no file).
    with _locks(config, writer):
        if writer:
            write_run_files(config, plan, resolved_yaml or _to_yaml(config))
        return _train(config, checked, layout, chunks, optimizer, scheduler, regularizer,
                      start_iteration=start_iteration, base=base, prior_time=prior_time, reference_ce=reference_ce)


def _to_yaml(config: FinetuneConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(config))


def _train(config: FinetuneConfig, checked: CheckedRun, layout, chunks, optimizer, scheduler, regularizer, *,
           start_iteration: int, base: Optional[Perplexities], prior_time: float, reference_ce: Optional[float]):
    """Steps 3 and 4 of the module docstring."""
    from nemo_mft import megatron as nm

    plan, data, recipe = checked.plan, checked.data, checked.recipe
    attachments = checked.base.attachments() if checked.base is not None else {}
    # What the checkpoint's weights need besides themselves: with LoRA they are adapters of this base model.
    base_record = {}
    if config.peft.method != "none":
        base_record = {"peft": {"method": config.peft.method, "dim": config.peft.dim, "alpha": config.peft.alpha,
                                "dropout": config.peft.dropout, "target_modules": list(config.peft.target_modules)},
                       "base_model": {"path": os.path.abspath(config.checkpoint.pretrained_checkpoint),
                                      "format": checked.base.format,
                                      "content_sha256": recipe["data.base_model"]}}

    writer = layout.rank == 0
    groups, objective = layout.groups, config.mft.objective
    train_cfg, ckpt_cfg, method = config.train, config.checkpoint, config.mft.method
    seq_length, mbs, gbs = config.dataset.seq_length, train_cfg.micro_batch_size, train_cfg.global_batch_size
    vocab_size = data.tokenizer.vocab_size

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

    reporter.data(start_iteration, data.accounting_dict())
    if base is None:
        base = evaluator.evaluate(chunks)
        reporter.evaluation(0, base, base)

    guard = DivergenceGuard(train_cfg.divergence_factor, method, reference_ce)

    def checkpoint(iteration: int, elapsed: float) -> str:
        # The common part of a checkpoint must be the same on every rank: take rank 0's clock.
        box = [elapsed]
        torch.distributed.broadcast_object_list(box, src=0)
        elapsed = box[0]
        base_ppl = {"spec_ppl": finite_or_none(base.spec_ppl), "gen_ppl": finite_or_none(base.gen_ppl)}
        common = {"consumed_samples": iteration * gbs, "base": base_ppl, "train_time_s": elapsed, "method": method,
                  "recipe": recipe, "initial_student_ce": guard.reference_ce, **base_record}
        return save_checkpoint(ckpt_cfg.save, iteration, chunks, optimizer, scheduler, layout, common=common,
                               keep_last=ckpt_cfg.keep_last, attachments=attachments)

    # ---- the loop
    last_saved: Optional[str] = plan.resume_from
    latest_eval: Optional[dict] = None
    iteration = start_iteration
    loop_start = interval_start = time.perf_counter()
    interval_iters = 0
    with StopSignals() as stop, contextlib.closing(reporter):
        while iteration < train_cfg.train_iters:
            lr = _lr(optimizer)
            result = nm.train_step(train_step_fn, batches, chunks, optimizer, groups=groups, num_microbatches=n_micro,
                                   seq_length=seq_length, micro_batch_size=mbs, regularizer=regularizer)
            guard.check(iteration + 1, result.reports, float(result.grad_norm), lr)
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
            signum = None if is_last else stop.agreed()
            save_every = ckpt_cfg.save_interval
            if ckpt_cfg.save and (is_last or exiting or signum or (save_every and iteration % save_every == 0)):
                last_saved = checkpoint(iteration, prior_time + time.perf_counter() - loop_start)
                logger.info("saved checkpoint %s", last_saved)
            if signum:
                raise RunInterrupted(signum, iteration, last_saved if ckpt_cfg.save else None)
            if exiting:
                logger.info("train.exit_interval: stopping after iteration %d; %s", iteration,
                            f"continue with checkpoint.load={ckpt_cfg.save}" if ckpt_cfg.save
                            else "no checkpoint.save, so this run cannot be continued")
                return None
        if latest_eval is None:  # resumed at the last iteration: nothing ran, evaluate once (collective)
            latest_eval = reporter.evaluation(iteration, base, evaluator.evaluate(chunks))

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
        "data": data.accounting_dict(),
    }
    write_summary(config.logger.log_dir, summary)
    return summary
