"""The learning-rate schedule: megatron-core's OptimizerParamScheduler, counted in iterations."""

from __future__ import annotations

from nemo_mft.config.schema import FinetuneConfig


def build_scheduler(optimizer, config: FinetuneConfig, *, follow_recipe: bool = True):
    """An ``OptimizerParamScheduler`` stepped once per iteration (``scheduler.step(1)``).

    Linear warmup from 0 over ``scheduler.lr_warmup_iters``, then ``lr_decay_style`` from ``optimizer.lr``
    to ``optimizer.min_lr`` until ``scheduler.lr_decay_iters`` (default ``train.train_iters``). Weight
    decay is constant. On resume (``load_state_dict``) the iteration count comes from the checkpoint, and
    the schedule's values from the recipe when ``follow_recipe`` (the resume check has made sure they are
    the checkpoint's, or a change the recipe allows: megatron's ``override_opt_param_scheduler``), else
    from the checkpoint (``use_checkpoint_opt_param_scheduler``, for checkpoints without a stored recipe).
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    sched, opt = config.scheduler, config.optimizer
    decay_iters = sched.lr_decay_iters or config.train.train_iters
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if sched.lr_warmup_iters > 0 else opt.lr,
        max_lr=opt.lr,
        min_lr=opt.min_lr,
        lr_warmup_steps=sched.lr_warmup_iters,
        lr_decay_steps=decay_iters,
        lr_decay_style=sched.lr_decay_style,
        start_wd=opt.weight_decay,
        end_wd=opt.weight_decay,
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=not follow_recipe,
        override_opt_param_scheduler=follow_recipe,
    )
