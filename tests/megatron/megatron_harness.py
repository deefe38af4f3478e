"""Shared helpers for tests/megatron: a tiny GPT, deterministic weights and data, gathering, recording.

The model is built the way a caller of `nemo_mft.megatron` without our recipes builds it: a megatron-core
``TransformerConfig``, the local layer spec, `GPTOptions`, an ``OptimizerConfig``, an `Objective` and the
process groups that `initialize_parallel` returns.

Everything that needs process groups runs inside ONE spawned world of 4 gloo ranks (`run_all`, started
once per session by conftest.py): importing megatron costs seconds per process, so the sections for the
model, forward-step and parallel-equivalence tests are batched into that job and each test file checks
its section of the result.

Identical weights across layouts: megatron initializes each TP shard from the local RNG and each pipeline
stage builds only its own layers, so layouts do not start equal by themselves. `deterministic_init` sets
every student parameter from a global tensor generated from its checkpoint key (``sharded_state_dict``:
global shape and this rank's slice; layer keys are global, PP-independent), then copies it into the teacher.
"""

from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist

VOCAB = 100  # true vocabulary; padded to 128 for TP=1 and TP=2 (make_vocab_size_divisible_by=64)
SEQ = 16
MBS = 2
NUM_MB = 4  # micro-batches per optimizer step, over all data-parallel ranks
STEPS = 3
TAU = 0.25
TEMPERATURE = 1.5
KD_CE_ALPHA = 0.25  # method kd_ce: weight of the cross-entropy term (not 0.5, so a swapped mix would show)
L2_WEIGHT, L2_SHIFT, L2_LR = 0.5, 0.01, 0.1  # L2-to-init: weight, theta - theta_0, SGD learning rate
# (tp, pp, sequence_parallel). Sequence parallelism needs apex's LayerNorm with the local spec: not on CPU.
LAYOUTS = ((1, 1, False), (2, 1, False), (1, 2, False), (2, 2, False))


def load_loss_reference():
    """tests/loss/reference.py (float64 MFT reference), under the unique name the loss tests use."""
    name = "mft_loss_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "loss" / "reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


PADDED_VOCAB = 128


def tiny_config(tp: int = 1, pp: int = 1, **overrides):
    """megatron-core TransformerConfig of the tiny GPT (fp32, no dropout, fusions off, per-token loss)."""
    from megatron.core.transformer import TransformerConfig

    fields = dict(num_layers=4, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                  tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, pipeline_dtype=torch.float32,
                  hidden_dropout=0.0, attention_dropout=0.0, calculate_per_token_loss=True,
                  use_cpu_initialization=True, bias_activation_fusion=False, masked_softmax_fusion=False,
                  bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
                  persist_layer_norm=False)
    fields.update(overrides)
    return TransformerConfig(**fields)


def build(layout, tp: int = 1, pp: int = 1, *, with_teacher: bool = True, padded_vocab: int = PADDED_VOCAB,
          lora=None, **overrides) -> list:
    """The MFT chunks of the tiny GPT on this rank of ``layout`` (`initialize_parallel`'s result); ``lora``:
    a LoRAConfig for adapters (teacher = adapters off)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from nemo_mft.megatron import GPTOptions, build_model

    from nemo_mft.peft import lora_factory

    adapt = None if lora is None else lora_factory(lora, seed=5, groups=layout.groups)
    return build_model(tiny_config(tp, pp, **overrides), get_gpt_layer_local_spec(),
                       GPTOptions(padded_vocab_size=padded_vocab, max_sequence_length=SEQ),
                       groups=layout.groups, with_teacher=with_teacher, adapt=adapt)


def objective(method: str = "mft", **overrides):
    from nemo_mft.methods import Objective

    fields = dict(method=method, tau=TAU, temperature=TEMPERATURE, kd_ce_alpha=KD_CE_ALPHA)
    fields.update(overrides)
    return Objective(**fields)


def forward_step(layout, method: str = "mft", *, vocab_size: int = VOCAB, evaluate: bool = False, **overrides):
    from nemo_mft.megatron import make_forward_step

    return make_forward_step(objective(method, **overrides), vocab_size=vocab_size, tp_group=layout.groups.tp,
                             evaluate=evaluate)


def optimizer(ddp: list, layout, **overrides):
    """megatron-core optimizer over ``ddp`` (Adam, lr 1e-4, beta2 0.95, no weight decay, clip 1.0 unless
    overridden)."""
    from megatron.core.optimizer import OptimizerConfig

    from nemo_mft.megatron import build_optimizer

    fields = dict(optimizer="adam", lr=1e-4, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8,
                  clip_grad=1.0, params_dtype=torch.float32)
    fields.update(overrides)
    return build_optimizer(ddp, OptimizerConfig(**fields), layout.groups)


# --- data ---------------------------------------------------------------------------------------------
def microbatch(mb_id: int, vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    """Deterministic micro-batch ``mb_id``: [MBS, SEQ] tokens/labels, an answer-only loss mask."""
    g = torch.Generator().manual_seed(9000 + mb_id)
    tokens = torch.randint(0, vocab, (MBS, SEQ), generator=g)
    labels = torch.randint(0, vocab, (MBS, SEQ), generator=g)
    prompt = torch.randint(1, SEQ // 2, (MBS, 1), generator=g)
    loss_mask = (torch.arange(SEQ).expand(MBS, SEQ) >= prompt).float()
    if mb_id % NUM_MB == 2:
        loss_mask[1] = 0.0  # a sample without answer tokens
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "position_ids": torch.arange(SEQ).expand(MBS, SEQ).contiguous(), "mb_id": torch.tensor(mb_id)}


def step_iterator(step: int, dp_rank: int, dp_size: int) -> Iterator[dict]:
    """This DP rank's micro-batches of ``step``: global micro-batch j goes to rank j % dp_size."""
    return iter([microbatch(step * NUM_MB + j) for j in range(dp_rank, NUM_MB, dp_size)])


# --- parameters by checkpoint key ---------------------------------------------------------------------
def param_shards(chunk, which: str = "trained") -> list[tuple[str, tuple, tuple, torch.nn.Parameter]]:
    """(key, global_shape, global_slice, parameter) for every trained parameter of this rank (the student's,
    or with LoRA the adapters'), or with ``which="base"`` for every base weight of the student."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from nemo_mft.megatron import unwrap

    model = unwrap(chunk)
    base = which == "base" or model.adapters is None
    params = {id(p): p for n, p in model.named_parameters() if n.startswith("adapters.") != base}
    sharded = model.base_sharded_state_dict() if which == "base" else model.sharded_state_dict()
    shards = []
    for sh in nested_values(sharded):
        if isinstance(sh, ShardedTensor) and id(sh.data) in params:
            shards.append((sh.key, tuple(sh.global_shape), sh.global_slice(), sh.data))
    found = {id(s[3]) for s in shards}
    missing = [n for n, p in model.named_parameters() if id(p) in params and id(p) not in found]
    assert not missing, f"parameters without a checkpoint shard: {missing}"
    return shards


def _full_init(key: str, shape: tuple, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
    noise = torch.randn(shape, generator=g)
    if "norm" in key and key.endswith("weight"):
        return 1.0 + 0.1 * noise
    if key.endswith("bias"):
        return 0.05 * noise
    if "embedding" in key or "output_layer" in key:
        return 0.5 * noise
    return 0.15 * noise


@torch.no_grad()
def deterministic_init(chunks: list, seed: int = 11, which: str = "base") -> None:
    """Layout-independent student weights (see module docstring), then teacher := student. ``which``:
    "base" (the GPT's weights) or "trained" (with LoRA: the adapters)."""
    from nemo_mft.megatron import sync_teacher_from_student

    for chunk in chunks:
        for key, shape, where, param in param_shards(chunk, which):
            param.copy_(_full_init(key, shape, seed)[where])
    sync_teacher_from_student(chunks)


def gather_full(chunks: list, value_of: Callable[[torch.nn.Parameter], torch.Tensor]):
    """All ranks' shards of ``value_of(param)`` assembled into full tensors by key (float64, CPU).

    Returns (full: {key: tensor}, replica_diff: max |difference| between copies of the same element held
    by several ranks (DP replicas, TP-duplicated norms)).
    """
    mine = [(key, shape, where, value_of(param).detach().to("cpu", torch.float64).clone())
            for chunk in chunks for key, shape, where, param in param_shards(chunk)]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    full, seen, replica_diff = {}, {}, 0.0
    for contributions in everyone:
        for key, shape, where, value in contributions:
            if key not in full:
                full[key] = torch.zeros(shape, dtype=torch.float64)
                seen[key] = torch.zeros(shape, dtype=torch.bool)
            old = full[key][where]
            mask = seen[key][where]
            if mask.any():
                replica_diff = max(replica_diff, float((old - value)[mask].abs().max()))
            full[key][where] = value
            seen[key][where] = True
    for key, mask in seen.items():
        assert bool(mask.all()), f"{key}: not every element was gathered"
    return full, replica_diff


def gather_vocab(logits: torch.Tensor, group) -> torch.Tensor:
    """[..., V_local] vocab shards of the TP ``group`` -> [..., V] (rank order)."""
    size = dist.get_world_size(group)
    if size == 1:
        return logits.detach().clone()
    parts = [torch.empty_like(logits) for _ in range(size)]
    dist.all_gather(parts, logits.detach().contiguous(), group=group)
    return torch.cat(parts, dim=-1)


class RecordingStep:
    """Wraps a forward step; on the last stage records each micro-batch's reports by ``mb_id``.

    With ``capture`` it also keeps the full-vocabulary (TP-gathered over ``inner.tp_group``) logits.
    """

    def __init__(self, inner, capture: bool = False) -> None:
        self.inner = inner
        self.tp_group = inner.tp_group
        self.runs_teacher = inner.runs_teacher
        self.report_keys = inner.report_keys
        self.capture = capture
        self.records: dict[int, dict] = {}
        self.captured: dict[int, dict] = {}

    def __call__(self, data_iterator, model):
        batch = next(data_iterator)
        output, loss_func = self.inner(iter([batch]), model)
        mb_id = int(batch["mb_id"])

        def recording_loss_func(output_tensor):
            if self.capture:  # before the loss: with inplace_grad it overwrites the student logits
                student, teacher = output_tensor
                self.captured[mb_id] = {
                    "student": gather_vocab(student, self.tp_group),
                    "teacher": gather_vocab(teacher, self.tp_group) if teacher is not None else None,
                    "labels": batch["labels"].clone(), "loss_mask": batch["loss_mask"].clone()}
            loss, num_tokens, reports = loss_func(output_tensor)
            self.records[mb_id] = {key: value.tolist() for key, value in reports.items()}
            self.records[mb_id]["num_tokens"] = int(num_tokens)
            self.records[mb_id]["loss_sum"] = float(loss.detach())
            return loss, num_tokens, reports

        return output, recording_loss_func


def all_records(step: RecordingStep) -> tuple[dict, float]:
    """Every rank's records merged (TP ranks hold copies); also the max disagreement between copies."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, step.records)
    merged, diff = {}, 0.0
    for records in everyone:
        for mb_id, rec in records.items():
            if mb_id in merged:
                diff = max(diff, abs(merged[mb_id]["loss_sum"] - rec["loss_sum"]))
            merged[mb_id] = rec
    return merged, diff


# --- the spawned job ---------------------------------------------------------------------------------
def run_all(rank: int, world_size: int) -> dict:
    """All sections on 4 gloo ranks; rank 0's dict is returned to the parent."""
    import adapter_sections
    import megatron_sections as sections

    from nemo_mft.megatron import init_distributed, megatron_on_cpu

    init_distributed()  # joins the existing gloo group
    out = {"cpu_compat_outside": sections.cpu_compat_outside_section()}
    with megatron_on_cpu():
        out.update({
            "cpu_compat": sections.cpu_compat_section(),
            "errors": sections.errors_section(),
            "model": sections.model_section(),
            "forward_step": sections.forward_step_section(),
            "methods": sections.methods_section(),
            "l2_init": sections.l2_init_section(),
            "equivalence": sections.equivalence_section(),
            "adapters": adapter_sections.adapters_section(),
        })
    out["cpu_compat_after"] = sections.cpu_compat_outside_section()
    return out
