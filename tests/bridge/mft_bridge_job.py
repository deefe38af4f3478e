"""The spawned job of tests/bridge/test_mft_finetune.py: Megatron-Bridge's finetune() with nemo_mft.bridge, and the
same training in nemo_mft's own loop, on 2 gloo ranks (one job: every Bridge start costs seconds).

Sections (each returns plain data; the test file asserts):

- `layout_section(tp)`: Bridge ``finetune()`` of the tiny GPT with MFT for 3 iterations (TP=tp, DP=2/tp), saving
  at iterations 2 and 3; the teacher's and student's weights when the first micro-batch runs and at the end; the
  keys of Bridge's checkpoint; then our own loop (``nemo_mft.megatron``: build_model + wrap_with_ddp +
  build_optimizer + train_step) from the student's weights as Bridge loaded them, on the micro-batches Bridge fed
  each rank (`bridge_harness.micro_batch`). With ``resume``: a second Bridge run loads the iteration-2 checkpoint
  and trains iteration 3.
- `methods_section()`: one iteration of every method (TP=1), Bridge vs our loop.
- `eval_section()`: Bridge's evaluation (TP=2) with the MFT forward step, against torch's cross-entropy.
- `bf16_section()`: the model as Bridge builds it in bf16 (Float16Module around MFTModel), one forward.
- `errors_section()`: what apply_mft refuses, and what it changes.
- `lora_section()`: Bridge LoRA + MFT (TP=1): logits of student and teacher, base and adapter weights; the base
  model's logits recomputed by our own megatron-core model from the frozen base weights.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import torch.distributed as dist

import bridge_harness as bh

ITERS = 3
MBS, GBS = 2, 4
LR = 1e-3
TAU, TEMPERATURE, KD_CE_ALPHA = 0.25, 1.5, 0.25


def _mft(method: str = "mft"):
    from nemo_mft.config.schema import MFTSection

    return MFTSection(method=method, tau=TAU, temperature=TEMPERATURE, kd_ce_alpha=KD_CE_ALPHA)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _all_ranks(flag: bool) -> bool:
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, bool(flag))
    return all(box)


def _gather_vocab(logits: torch.Tensor, tp_group) -> torch.Tensor:
    size = dist.get_world_size(tp_group)
    if size == 1:
        return logits.detach().clone()
    parts = [torch.empty_like(logits) for _ in range(size)]
    dist.all_gather(parts, logits.detach().contiguous(), group=tp_group)
    return torch.cat(parts, dim=-1)


class Probe:
    """Wraps the MFT forward step: keeps the model chunk, its weights when the first micro-batch runs, the
    micro-batches this rank received (by iteration) and, with ``capture``, the first micro-batch's full-vocabulary
    student and teacher logits of each iteration (copied before the loss: it may write gradients into them)."""

    def __init__(self, inner, capture: bool = False) -> None:
        self.inner = inner
        self.capture = capture
        self.chunk = None
        self.pg = None
        self.start = None
        self.batches: dict[int, list] = {}
        self.logits: dict[int, dict] = {}
        self.evaluations: list[dict] = []

    def __call__(self, state, data_iterator, model):
        from megatron.bridge.training.utils.pg_utils import get_pg_collection
        from megatron.core.utils import unwrap_model

        from nemo_mft.megatron.mft_model import MFTModel

        chunk = unwrap_model(model)
        if self.chunk is None:
            self.chunk = chunk
            self.pg = get_pg_collection(model)
            self.start = {"params": {n: p.detach().clone() for n, p in chunk.named_parameters()}}
            if isinstance(chunk, MFTModel):
                self.start.update(student=_tensors(chunk.module), teacher=_tensors(chunk.teacher))
            else:
                self.start.update(student=_tensors(chunk))
        iteration = int(state.train_state.step)
        batch = next(data_iterator)
        if model.training:
            self.batches.setdefault(iteration, []).append({k: v.clone() for k, v in batch.items()})
        output, loss_func = self.inner(state, iter([batch]), model)
        tp_group = get_pg_collection(model).tp
        first = self.capture and iteration not in self.logits and model.training
        evaluating = not model.training

        def probed_loss_func(output_tensor):
            if evaluating:  # before the loss; the reference: torch's cross-entropy over the true vocabulary
                student, teacher = output_tensor
                full = _gather_vocab(student, tp_group)[..., :bh.TOKENIZER_VOCAB].double()
                per_token = torch.nn.functional.cross_entropy(full.flatten(0, 1), batch["labels"].flatten(),
                                                              reduction="none")
                mask = batch["loss_mask"].flatten().double()
                loss, num_tokens, reports = loss_func(output_tensor)
                self.evaluations.append({
                    "teacher_ran": teacher is not None, "keys": sorted(reports),
                    "loss": [float(v) for v in reports["loss"]],
                    "student_ce": [float(v) for v in reports["student_ce"]],
                    "reference": [float((per_token * mask).sum()), float(mask.sum())]})
                return loss, num_tokens, reports
            if first:
                student, teacher = output_tensor
                self.logits[iteration] = {"student": _gather_vocab(student, tp_group),
                                          "teacher": _gather_vocab(teacher, tp_group),
                                          "tokens": batch["tokens"].clone()}
            return loss_func(output_tensor)

        return output, probed_loss_func


def _bridge_run(cfg, mft, capture: bool = False):
    """finetune(cfg) with MFT; returns (probe, Bridge's reduced loss dict per iteration)."""
    from nemo_mft.bridge import apply_mft, mft_forward_step

    apply_mft(cfg, mft)
    probe = Probe(mft_forward_step(cfg, mft), capture=capture)
    capture_cb = bh.weight_capture()
    bh.run_finetune(cfg, probe, callbacks=[capture_cb])
    return probe, capture_cb.loss_dicts


def _our_loop(provider, tp: int, method: str, start_weights: dict, batches: dict, iters: int) -> list[dict]:
    """nemo_mft's own loop: same provider config, the student's start weights, the same micro-batches; the
    reports of each step ({key: (sum, count)} over the global batch)."""
    from megatron.bridge.training.initialize import destroy_global_state
    from megatron.core.optimizer import OptimizerConfig

    from nemo_mft.megatron import (GPTOptions, build_model, build_optimizer, destroy_parallel, initialize_parallel,
                                   make_forward_step, train_step, unwrap, wrap_with_ddp)

    destroy_global_state()  # whatever Bridge left
    layout = initialize_parallel(tp, 1, seed=7)
    try:
        config = dataclasses.replace(provider, tensor_model_parallel_size=tp)
        config.finalize()  # Bridge's provider fills init methods etc. here (Bridge's setup() does the same)
        gpt = GPTOptions(padded_vocab_size=config.vocab_size, max_sequence_length=config.seq_length,
                         position_embedding_type=config.position_embedding_type, rotary_base=config.rotary_base,
                         share_embeddings_and_output_weights=config.share_embeddings_and_output_weights)
        objective = _mft(method).objective
        chunks = build_model(config, config.transformer_layer_spec(config), gpt, groups=layout.groups,
                             with_teacher=objective.uses_teacher)
        model = unwrap(chunks[0])
        missing, unexpected = model.module.load_state_dict(start_weights, strict=False)
        assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
        model.sync_teacher()
        ddp = wrap_with_ddp(chunks, layout.groups)
        optimizer = build_optimizer(ddp, OptimizerConfig(optimizer="adam", lr=LR, min_lr=LR, weight_decay=0.0,
                                                         adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
                                                         clip_grad=1.0, params_dtype=torch.float32),
                                    layout.groups)
        step = make_forward_step(objective, vocab_size=bh.TOKENIZER_VOCAB, tp_group=layout.groups.tp)
        reports = []
        for iteration in range(iters):
            result = train_step(step, iter(batches[iteration]), ddp, optimizer, groups=layout.groups,
                                num_microbatches=len(batches[iteration]), seq_length=config.seq_length,
                                micro_batch_size=MBS)
            reports.append(result.reports)
        return reports
    finally:
        destroy_parallel()


def _rank_batches(probe: Probe) -> dict:
    """The micro-batches this rank received, without the keys Bridge did not need (None)."""
    return {it: [{k: v for k, v in mb.items() if v is not None} for mb in mbs] for it, mbs in probe.batches.items()}


def _matches_checkpoint(saved: dict, module: torch.nn.Module, dp_cp_group) -> bool:
    """Every plain shard of ``module``'s checkpoint layout (``sharded_state_dict``: key, this rank's slice of the
    global tensor) equals the saved tensor there (factories, e.g. SwiGLU's split fc1, are left out)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    layout = module.sharded_state_dict(metadata={"dp_cp_group": dp_cp_group})
    shards = [sh for sh in nested_values(layout) if isinstance(sh, ShardedTensor) and sh.key in saved]
    assert len(shards) >= 5, [sh.key for sh in shards]
    return all(torch.equal(saved[sh.key][sh.global_slice()], sh.data) for sh in shards)


def _checkpoint_keys(path: str) -> list[str]:
    return sorted(bh.load_checkpoint_weights(path))


def layout_section(tp: int, run_dir: str, pretrained: str, resume: bool) -> dict:
    out: dict = {}
    save = os.path.join(run_dir, f"ft_tp{tp}")
    cfg = bh.tiny_finetune_config(run_dir=os.path.join(run_dir, f"run_tp{tp}"), tensor_parallel=tp,
                                  train_iters=ITERS, micro_batch_size=MBS, global_batch_size=GBS, lr=LR,
                                  pretrained_checkpoint=pretrained, save=save, save_interval=2)
    provider = bh.tiny_gpt_provider(tensor_parallel=tp)
    probe, losses = _bridge_run(cfg, _mft())
    chunk = probe.chunk
    out["bridge_losses"] = [d["loss"] for d in losses]
    out["chunk_type"] = type(chunk).__name__
    out["teacher_start_is_student_start"] = _all_ranks(_equal(probe.start["teacher"], probe.start["student"]))
    out["teacher_unchanged"] = _all_ranks(_equal(_tensors(chunk.teacher), probe.start["teacher"]))
    out["teacher_frozen"] = _all_ranks(all(not p.requires_grad for p in chunk.teacher.parameters())
                                       and not chunk.teacher.training)
    out["student_changed"] = _all_ranks(not _equal(_tensors(chunk.module), probe.start["student"]))
    out["teacher_params_in_model"] = any(p is q for p in chunk.parameters() for q in chunk.teacher.parameters())
    out["checkpoint_keys"] = _checkpoint_keys(save)
    out["pretrained_keys"] = _checkpoint_keys(pretrained)
    saved = bh.load_checkpoint_weights(save, as_parameter_names=False)  # the files' keys: sharded_state_dict's
    out["checkpoint_vs_student"] = _all_ranks(_matches_checkpoint(saved, chunk.module, probe.pg.dp_cp))
    out["checkpoint_vs_teacher"] = _all_ranks(_matches_checkpoint(saved, chunk.teacher, probe.pg.dp_cp))
    pretrained_files = bh.load_checkpoint_weights(pretrained, as_parameter_names=False)
    out["teacher_vs_pretrained"] = _all_ranks(_matches_checkpoint(pretrained_files, chunk.teacher, probe.pg.dp_cp))
    student_start = probe.start["student"]
    teacher_start = probe.start["teacher"]
    batches = _rank_batches(probe)
    out["batches_match_harness"] = _all_ranks(_batches_match(batches, tp))
    if resume:
        cfg = bh.tiny_finetune_config(run_dir=os.path.join(run_dir, f"resume_tp{tp}"), tensor_parallel=tp,
                                      train_iters=ITERS, micro_batch_size=MBS, global_batch_size=GBS, lr=LR,
                                      pretrained_checkpoint=pretrained, load=save)
        cfg.checkpoint.ckpt_step = 2
        probe2, losses2 = _bridge_run(cfg, _mft())
        out["resume_losses"] = [d["loss"] for d in losses2]
        out["resume_iterations"] = sorted(probe2.batches)
        out["resumed_teacher_is_pretrained"] = _all_ranks(_equal(probe2.start["teacher"], teacher_start))
        out["resumed_student_is_finetuned"] = _all_ranks(not _equal(probe2.start["student"], student_start))
    reports = _our_loop(provider, tp, "mft", student_start, batches, ITERS)
    out["our_losses"] = [r["loss"][0] / r["loss"][1] for r in reports]
    return out


def _batches_match(batches: dict, tp: int) -> bool:
    """Bridge's micro-batches on this rank are those `bridge_harness.micro_batch` describes."""
    dp_size = dist.get_world_size() // tp
    dp_rank = dist.get_rank() // tp
    for iteration, mbs in batches.items():
        for micro, batch in enumerate(mbs):
            expected = bh.micro_batch(iteration, micro, micro_batch_size=MBS, global_batch_size=GBS,
                                      data_parallel_rank=dp_rank, data_parallel_size=dp_size)
            if not all(torch.equal(batch[k], expected[k]) for k in expected):
                return False
    return True


def methods_section(run_dir: str, pretrained: str) -> dict:
    from nemo_mft.methods import METHODS

    out = {}
    for method in METHODS:
        cfg = bh.tiny_finetune_config(run_dir=os.path.join(run_dir, f"method_{method}"), tensor_parallel=1,
                                      train_iters=1, micro_batch_size=MBS, global_batch_size=GBS, lr=LR,
                                      pretrained_checkpoint=pretrained)
        probe, losses = _bridge_run(cfg, _mft(method))
        reports = _our_loop(bh.tiny_gpt_provider(tensor_parallel=1), 1, method, probe.start["student"],
                            _rank_batches(probe), 1)
        out[method] = {"bridge": losses[0], "ours": {k: v[0] / v[1] for k, v in reports[0].items() if v[1]},
                       "chunk_type": type(probe.chunk).__name__}
    return out


def lora_section(run_dir: str, pretrained: str) -> dict:
    from megatron.bridge.peft.lora import LoRA

    cfg = bh.tiny_finetune_config(run_dir=os.path.join(run_dir, "lora"), tensor_parallel=1, train_iters=ITERS,
                                  micro_batch_size=MBS, global_batch_size=GBS, lr=1e-2,
                                  pretrained_checkpoint=pretrained,
                                  peft=LoRA(target_modules=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
                                            dim=4, alpha=8))
    probe, losses = _bridge_run(cfg, _mft(), capture=True)
    chunk = probe.chunk
    start = probe.start["params"]
    end = {n: p.detach().clone() for n, p in chunk.named_parameters()}
    trainable = {n for n, p in chunk.named_parameters() if p.requires_grad}
    out = {
        "chunk_type": type(chunk).__name__,
        "bridge_losses": [d["loss"] for d in losses],
        "num_trainable": len(trainable),
        "trainable_are_adapters": all(".adapter." in n for n in trainable),
        "base_unchanged": _all_ranks(all(torch.equal(start[n], end[n]) for n in start if n not in trainable)),
        "adapters_changed": _all_ranks(all(not torch.equal(start[n], end[n]) for n in trainable
                                           if "linear_out" in n)),
        "step0_student_eq_teacher": torch.equal(probe.logits[0]["student"], probe.logits[0]["teacher"]),
        "last_student_minus_teacher": float((probe.logits[ITERS - 1]["student"]
                                             - probe.logits[ITERS - 1]["teacher"]).abs().max()),
    }
    # The base model, independently: a plain megatron-core GPTModel with the frozen base weights.
    base_weights = {n.replace(".to_wrap", ""): v for n, v in start.items() if n not in trainable}
    reference = _base_logits(bh.tiny_gpt_provider(tensor_parallel=1), base_weights,
                             [probe.logits[it]["tokens"] for it in range(ITERS)])
    out["teacher_vs_base"] = [float((probe.logits[it]["teacher"] - reference[it]).abs().max()) for it in range(ITERS)]
    out["logit_scale"] = float(reference[0].abs().max())
    return out


@torch.no_grad()
def _base_logits(provider, weights: dict, token_batches: list) -> list[torch.Tensor]:
    from megatron.bridge.training.initialize import destroy_global_state

    from nemo_mft.megatron import GPTOptions, build_model, destroy_parallel, initialize_parallel, unwrap

    destroy_global_state()
    layout = initialize_parallel(1, 1, seed=7)
    try:
        provider.finalize()
        gpt = GPTOptions(padded_vocab_size=provider.vocab_size, max_sequence_length=provider.seq_length,
                         position_embedding_type=provider.position_embedding_type, rotary_base=provider.rotary_base)
        model = unwrap(build_model(provider, provider.transformer_layer_spec(provider), gpt, groups=layout.groups,
                                   with_teacher=False)[0]).module
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
        model.eval()
        positions = torch.arange(provider.seq_length).expand(MBS, -1)
        return [model(tokens, positions, None) for tokens in token_batches]
    finally:
        destroy_parallel()


@functools.lru_cache(maxsize=None)
def _with_validation_class():
    """The harness's fixed-data provider plus a validation split (other samples: another data seed)."""
    base = bh.dataset_provider_class()

    @dataclasses.dataclass(kw_only=True)
    class WithValidation(base):
        def build_datasets(self, context):
            train, _, _ = super().build_datasets(context)
            valid = bh.FixedTokenDataset(max(context.valid_samples, GBS), seed=self.seed + 1,
                                         seq_length=self.seq_length, vocab=self.vocab,
                                         prompt_length=self.prompt_length)
            return train, valid, None

    return WithValidation


def eval_section(run_dir: str, pretrained: str) -> dict:
    """Bridge's evaluation (TP=2) with the MFT forward step: the student alone, "loss" = its cross-entropy."""
    tp = 2
    cfg = bh.tiny_finetune_config(run_dir=os.path.join(run_dir, "eval"), tensor_parallel=tp, train_iters=2,
                                  micro_batch_size=MBS, global_batch_size=GBS, lr=LR,
                                  pretrained_checkpoint=pretrained)
    cfg.dataset = _with_validation_class()(seq_length=cfg.model.seq_length, seed=0)
    cfg.train.eval_interval, cfg.train.eval_iters = 2, 1
    probe, losses = _bridge_run(cfg, _mft())
    return {"evaluations": probe.evaluations, "train_iterations": sorted(probe.batches), "losses": losses}


def bf16_section(run_dir: str, pretrained: str) -> dict:
    """bf16: Bridge's get_model wraps each chunk in Float16Module, which casts it. Built the way Bridge's setup()
    builds it (provide_distributed_model, pre-wrap hooks, Float16Module; no DDP: megatron's bf16 optimizer
    needs CUDA tensors), then student and teacher through the wrapper as the forward step runs them, and the loss
    on their bf16 logits."""
    from megatron.bridge.training.checkpointing import _load_model_weights_from_checkpoint
    from megatron.bridge.training.initialize import destroy_global_state
    from megatron.core import parallel_state
    from megatron.core.process_groups_config import ProcessGroupCollection

    from nemo_mft.bridge import apply_mft, mft_forward_step
    from nemo_mft.bridge.pretrained import checkpoint_iteration_dir
    from nemo_mft.megatron import make_forward_step

    destroy_global_state()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    try:
        cfg = bh.tiny_finetune_config(run_dir=os.path.join(run_dir, "bf16"), pretrained_checkpoint=pretrained,
                                      model=bh.tiny_gpt_provider(tensor_parallel=1, bf16=True,
                                                                 params_dtype=torch.bfloat16))
        apply_mft(cfg, _mft())
        cfg.model.finalize()
        wrapped = cfg.model.provide_distributed_model(wrap_with_ddp=False, use_cpu_initialization=True,
                                                      pg_collection=ProcessGroupCollection.use_mpu_process_groups())
        chunk = wrapped[0].module
        # What Bridge's load_checkpoint then does for a new finetuning run: the pretrained weights into the student
        _load_model_weights_from_checkpoint(checkpoint_iteration_dir(pretrained), [chunk.module])
        batch = bh.micro_batch(0, 0, micro_batch_size=MBS, global_batch_size=GBS)
        step = mft_forward_step(cfg, _mft())
        with torch.no_grad():
            student, teacher = step.run_models(wrapped[0], True, batch["tokens"], batch["position_ids"], None)
            loss, _, _ = make_forward_step(_mft().objective, vocab_size=bh.TOKENIZER_VOCAB, tp_group=None).loss_func(
                batch["labels"], batch["loss_mask"], (student.clone(), teacher))
        pretrained_files = bh.load_checkpoint_weights(pretrained, as_parameter_names=False)
        dp_cp = parallel_state.get_data_parallel_group(with_context_parallel=True)
        return {"wrapper": type(wrapped[0]).__name__, "chunk": type(chunk).__name__,
                "student_dtype": str(next(chunk.module.parameters()).dtype),
                "teacher_dtype": str(next(chunk.teacher.parameters()).dtype),
                "logits_dtypes": (str(student.dtype), str(teacher.dtype)),
                "student_eq_teacher_logits": torch.equal(student, teacher),
                "loss": float(loss),
                "teacher_vs_pretrained_bf16": _matches_checkpoint(
                    {k: v.to(torch.bfloat16) for k, v in pretrained_files.items()}, chunk.teacher, dp_cp)}
    finally:
        destroy_global_state()


def _raises(fn, exc_type) -> str:
    """The message of the ``exc_type`` that ``fn()`` raises ("" when it raises nothing)."""
    try:
        fn()
    except exc_type as err:
        return str(err)
    return ""


def errors_section(run_dir: str) -> dict:
    """apply_mft / mft_forward_step on configurations MFT under Bridge refuses, and what a valid one changes."""
    from megatron.bridge.peft.dora import DoRA
    from megatron.bridge.peft.lora import LoRA
    from megatron.core.transformer import TransformerConfig

    from nemo_mft.bridge import apply_mft, mft_forward_step
    from nemo_mft.bridge.teacher import FrozenTeacherHook
    from nemo_mft.config.schema import MFTSection

    def cfg(peft=None, **model_fields):
        config = bh.tiny_finetune_config(run_dir=os.path.join(run_dir, "errors"), peft=peft)
        for name, value in model_fields.items():
            setattr(config.model, name, value)
        return config

    def hooks(config):
        return [h for h in getattr(config.model, "_pre_wrap_hooks", []) if isinstance(h, FrozenTeacherHook)]

    out = {
        "pp_mft": _raises(lambda: apply_mft(cfg(pipeline_model_parallel_size=2), _mft()), ValueError),
        "pp_ft": _raises(lambda: apply_mft(cfg(pipeline_model_parallel_size=2), _mft("ft")), ValueError),
        "vpp": _raises(lambda: apply_mft(cfg(virtual_pipeline_model_parallel_size=2), _mft()), ValueError),
        "cp": _raises(lambda: apply_mft(cfg(context_parallel_size=2), _mft()), ValueError),
        "l2": _raises(lambda: apply_mft(cfg(), MFTSection(l2_init_weight=0.1)), ValueError),
        "dora": _raises(lambda: apply_mft(cfg(peft=DoRA()), _mft()), ValueError),
        "not_mft_section": _raises(lambda: apply_mft(cfg(), _mft().objective), TypeError),
    }
    plain = cfg()
    plain.model = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1)
    out["not_gpt_provider"] = _raises(lambda: apply_mft(plain, _mft()), TypeError)
    fsdp = cfg()
    fsdp.dist = dataclasses.replace(fsdp.dist, use_megatron_fsdp=True)
    out["fsdp"] = _raises(lambda: apply_mft(fsdp, _mft()), ValueError)
    fresh = cfg()
    out["step_before_apply"] = _raises(lambda: mft_forward_step(fresh, _mft()), ValueError)
    before = (fresh.model.calculate_per_token_loss, fresh.ddp.average_in_collective)
    fresh.model.calculate_per_token_loss, fresh.ddp.average_in_collective = False, True
    assert apply_mft(fresh, _mft()) is fresh
    out["normalization"] = (before, fresh.model.calculate_per_token_loss, fresh.ddp.average_in_collective)
    out["teacher_hooks"] = len(hooks(fresh))
    out["twice"] = _raises(lambda: apply_mft(fresh, _mft()), ValueError)
    out["other_objective"] = _raises(lambda: mft_forward_step(fresh, _mft("kd")), ValueError)
    out["step_type"] = type(mft_forward_step(fresh, _mft())).__name__
    lora = cfg(peft=LoRA())
    apply_mft(lora, _mft())
    ft = cfg()
    apply_mft(ft, _mft("ft"))
    out["hooks_lora_ft"] = (len(hooks(lora)), len(hooks(ft)))
    out["teacher_follows_dtype"] = _teacher_follows_dtype()
    return out


def _teacher_follows_dtype() -> tuple:
    """MFTModel.double() / .float(): the teacher's dtype after each (it is not a registered submodule)."""
    from megatron.bridge.training.initialize import destroy_global_state

    from nemo_mft.megatron import GPTOptions, build_model, destroy_parallel, initialize_parallel, unwrap

    destroy_global_state()
    layout = initialize_parallel(1, 1, seed=7)
    try:
        provider = bh.tiny_gpt_provider(tensor_parallel=1)
        provider.finalize()
        gpt = GPTOptions(padded_vocab_size=provider.vocab_size, max_sequence_length=provider.seq_length)
        chunk = unwrap(build_model(provider, provider.transformer_layer_spec(provider), gpt, groups=layout.groups,
                                   with_teacher=True)[0])
        dtypes = [next(chunk.teacher.parameters()).dtype]
        chunk.double()
        dtypes.append(next(chunk.teacher.parameters()).dtype)
        chunk.float()
        dtypes.append(next(chunk.teacher.parameters()).dtype)
        return tuple(str(d) for d in dtypes)
    finally:
        destroy_parallel()


def run_all(rank: int, world_size: int, run_dir: str) -> dict:
    """Every section on the spawned gloo ranks (inside bridge_on_cpu); rank 0's dict is what the test reads."""
    pretrained = os.path.join(run_dir, "pretrained")
    bh.make_pretrained_checkpoint(pretrained)
    sections = os.environ.get("MFT_BRIDGE_SECTIONS", "tp1,tp2,methods,lora,eval,bf16,errors").split(",")
    out = {}
    if "errors" in sections:
        out["errors"] = errors_section(run_dir)
    if "tp1" in sections:
        out["tp1"] = layout_section(1, run_dir, pretrained, resume=True)
    if "tp2" in sections:
        out["tp2"] = layout_section(2, run_dir, pretrained, resume=False)
    if "methods" in sections:
        out["methods"] = methods_section(run_dir, pretrained)
    if "lora" in sections:
        out["lora"] = lora_section(run_dir, pretrained)
    if "bf16" in sections:
        out["bf16"] = bf16_section(run_dir, pretrained)
    if "eval" in sections:
        out["eval"] = eval_section(run_dir, pretrained)
    return out
