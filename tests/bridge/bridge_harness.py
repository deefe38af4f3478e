"""TEST-ONLY harness: run Megatron-Bridge 0.3.1's own training entry points on CPU gloo ranks.

Use (from a test in ``tests/bridge/``, run with ``.venv-bridge/bin/python -m pytest tests/bridge``)::

    import bridge_harness as bh

    def body(rank, world_size, run_dir):          # runs in every spawned rank, inside bridge_on_cpu()
        from megatron.bridge.training.gpt_step import forward_step
        bh.make_pretrained_checkpoint(f"{run_dir}/pretrained")      # collective: every rank calls it
        cfg = bh.tiny_finetune_config(run_dir=f"{run_dir}/tp{world_size}", tensor_parallel=world_size,
                                      pretrained_checkpoint=f"{run_dir}/pretrained")
        recorder = bh.LossRecorder(forward_step)
        bh.run_finetune(cfg, recorder)            # Bridge's finetune()
        return recorder.records                   # per micro-batch: iteration, loss_sum, num_tokens, report

    per_rank = bh.run_ranks(2, body, str(tmp_path))    # [rank0 result, rank1 result]

Pieces:

- `run_ranks(world_size, fn, *args)`: spawns ``world_size`` processes (``torch.multiprocessing``, spawn, free TCP
  port on 127.0.0.1), sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` (Bridge's
  ``get_rank_safe`` & co. read them), one intra-op thread per rank, initialises the default gloo process group
  (so Bridge skips its own ``init_process_group`` and its NCCL-only ``barrier(device_ids=...)``), and calls
  ``fn(rank, world_size, *args)`` inside ``cpu_bridge.bridge_on_cpu()`` (TE stand-in + CPU patches, see
  ``tests/bridge/cpu_bridge.py``). Returns every rank's return value (picklable), re-raises any rank's failure
  with its traceback. Spawning costs ~10 s of imports: batch several cases into one ``fn``.
- `tiny_gpt_provider(...)`: a Bridge ``GPTModelProvider`` (Llama-like: RMSNorm, SwiGLU, RoPE, GQA, no biases,
  untied output layer), megatron-core's local layer spec (``megatron.bridge.models.gpt_provider.local_layer_spec``),
  fp32, no dropout, every fusion off, and the ``TransformerConfig`` settings our own loop uses
  (``nemo_mft.megatron.model.transformer_config_settings()``: per-token loss, CPU initialisation, no fused kernels).
  Vocabulary: 128 model columns (explicit ``vocab_size``, so Bridge does not pad it), tokens drawn from
  ``[0, TOKENIZER_VOCAB)`` = ``[0, 100)``.
- `FixedTokenDatasetProvider` (a Bridge ``DatasetProvider``): sample ``i`` is a pure function of ``(seed, i)``
  (`fixed_sample`), served by Bridge's own ``MegatronPretrainingSampler`` (``dataloader_type="single"``: sequential,
  no shuffling). `micro_batch(...)` rebuilds EXACTLY the micro-batch Bridge feeds a given data-parallel rank at
  a given iteration, for feeding our own loop the same data.
  Sample fields (``[seq_length]`` each): ``tokens`` (int64), ``labels`` (= next token; the last one wraps to the
  first), ``loss_mask`` (float32: 0 on the first ``prompt_length`` positions, 1 after: an answer-only mask),
  ``position_ids`` (0..seq_length-1).
- `tiny_finetune_config(...)`: a ``ConfigContainer`` for ``finetune()``/``pretrain()`` around the two above: Adam,
  constant LR, gloo, ``NullTokenizer`` (vocab 100), no validation/test split, no tensorboard,
  ``torch_dist`` checkpoints with synchronous saves and no persistent worker.
- `make_pretrained_checkpoint(path, ...)`: saves a Bridge checkpoint (``megatron.bridge.training.model_load_save.
  save_megatron_model``, format ``torch_dist``, layout-independent) of deterministic weights (megatron's init on
  CPU from ``seed``), to pass as ``checkpoint.pretrained_checkpoint``. Collective; sets up and tears down
  megatron's model-parallel state itself. `load_checkpoint_weights(path)` reads its tensors back (full, unsharded).
- `LossRecorder(forward_step)`: wraps any Bridge forward step (``(state, data_iterator, model)`` or
  ``(data_iterator, model)``) and records, per micro-batch and rank, what its ``loss_func`` returned.
- `run_finetune(cfg, forward_step, callbacks=None)`: Bridge's ``finetune()``; with callbacks (Bridge
  ``Callback`` instances, e.g. `WeightCapture`), the same checks then Bridge's ``pretrain(cfg, forward_step,
  callbacks)`` (0.3.1's ``finetune`` takes no callbacks and is exactly ``assert pretrained_checkpoint or load;
  pretrain(...)``).
- `WeightCapture`: a Bridge callback that keeps a CPU copy of this rank's model state (``named_parameters`` of
  the unwrapped chunks) at the end of training.

Facts found while building this (Bridge 0.3.1, megatron-core 0.16.1, torch 2.13 CPU):

- Run it with the ``.venv-bridge`` that ``make venv-bridge`` builds from requirements/bridge*.txt (about 1 min
  with a warm pip cache). A venv with only Bridge --no-deps, transformers 4.57 and peft lacks packages Bridge
  imports at module level (below) and fails in ``import megatron.bridge`` or ``megatron.bridge.training.*``.

- ``megatron.bridge.training.train``, ``checkpointing`` and ``gpt_step`` import NVIDIA ModelOpt at module level,
  and ``megatron.bridge.models`` imports einops; ``megatron.bridge.recipes`` imports every recipe family,
  including the VLM ones, and so Megatron-Energon's dependencies (multi-storage-client, webdataset, s3fs, ...).
  All are real packages in ``requirements/bridge.txt`` (no stand-ins beside TE).
- ``finetune(config, forward_step_func)`` requires ``checkpoint.pretrained_checkpoint`` or ``checkpoint.load``.
- The forward step's state injection is decided by the signature: first parameter named ``state`` (or a
  ``GlobalState`` annotation) -> Bridge passes its ``GlobalState``.
- Bridge's ``masked_next_token_loss`` returns ``(loss_sum, num_tokens, {"lm loss": tensor([sum, count])})``.
- ``TrainingConfig.eval_interval`` must be an int even without a validation set (it sizes the validation
  split); the dataset provider returns ``None`` for validation/test, so Bridge runs no evaluation.
"""

from __future__ import annotations

import datetime
import functools
import os
import pickle
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.multiprocessing as mp

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import cpu_bridge  # noqa: E402  (tests/bridge/cpu_bridge.py)

TOKENIZER_VOCAB = 100  # tokens of the fixed data are drawn from [0, TOKENIZER_VOCAB)
MODEL_VOCAB = 128  # output columns of the tiny model (a multiple of 2 * 64: TP=1 and TP=2 alike)
SEQ_LENGTH = 16
COLLECTIVE_TIMEOUT_S = 300  # gloo's timeout for every collective of a run_ranks job


# ----------------------------------------------------------------------------------------------------------------
# Spawned gloo ranks
# ----------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out_dir: str, payload: bytes) -> None:
    # The body arrives pickled and is unpickled only after the stand-in is installed: unpickling imports the
    # body's module, which may import megatron (megatron-core must probe for TE before the stand-in exists).
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)  # the ranks share the machine's cores
    result: Any = None
    error: Optional[str] = None
    try:
        cpu_bridge.install_stand_ins()
        fn, args = pickle.loads(payload)
        # A rank that fails leaves the others in a collective: they time out instead of hanging the test run.
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size,
                                             timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        with cpu_bridge.bridge_on_cpu():
            result = fn(rank, world_size, *args)
    except BaseException:  # noqa: BLE001 - handed to the parent with its traceback
        error = traceback.format_exc()
    finally:
        try:
            payload = pickle.dumps((result, error))
        except Exception:  # noqa: BLE001
            payload = pickle.dumps((None, error or f"rank {rank}: result is not picklable\n{traceback.format_exc()}"))
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
            handle.write(payload)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_ranks(world_size: int, fn: Callable, *args: Any) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned gloo ranks; return all ranks' results.

    ``fn`` must be a module-level function (spawn pickles it by name) and its result picklable. Any rank's
    exception fails the call with that rank's traceback.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    with tempfile.TemporaryDirectory(prefix="bridge-ranks-") as out_dir:
        mp.start_processes(_rank_main, args=(world_size, _free_port(), out_dir, pickle.dumps((fn, args))), nprocs=world_size,
                           join=True, start_method="spawn")
        outcomes = []
        for rank in range(world_size):
            path = os.path.join(out_dir, f"rank{rank}.pkl")
            if not os.path.exists(path):
                outcomes.append((None, f"rank {rank} wrote no result (killed?)"))
                continue
            with open(path, "rb") as handle:
                outcomes.append(pickle.load(handle))
    errors = [f"--- rank {rank} ---\n{err}" for rank, (_, err) in enumerate(outcomes) if err]
    if errors:
        raise AssertionError("Bridge ranks failed:\n" + "\n".join(errors))
    return [result for result, _ in outcomes]


# ----------------------------------------------------------------------------------------------------------------
# Model provider and data
# ----------------------------------------------------------------------------------------------------------------


def tiny_gpt_provider(*, tensor_parallel: int = 1, num_layers: int = 2, hidden_size: int = 32,
                      num_attention_heads: int = 4, num_query_groups: int = 2, ffn_hidden_size: int = 64,
                      seq_length: int = SEQ_LENGTH, vocab_size: int = MODEL_VOCAB, **overrides: Any):
    """A Bridge ``GPTModelProvider`` for a tiny Llama-like GPT on megatron-core's local spec (module docstring).

    ``overrides`` set further provider fields (e.g. ``share_embeddings_and_output_weights=True``).
    """
    import torch.nn.functional as F
    from megatron.bridge.models.gpt_provider import GPTModelProvider, local_layer_spec

    from nemo_mft.megatron.model import transformer_config_settings

    fields = dict(
        num_layers=num_layers, hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
        num_attention_heads=num_attention_heads, num_query_groups=num_query_groups,
        kv_channels=hidden_size // num_attention_heads,
        vocab_size=vocab_size, should_pad_vocab=False, seq_length=seq_length,
        normalization="RMSNorm", layernorm_epsilon=1e-5, activation_func=F.silu, gated_linear_unit=True,
        add_bias_linear=False, add_qkv_bias=False, position_embedding_type="rope", rotary_base=10000,
        share_embeddings_and_output_weights=False,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.02,
        params_dtype=torch.float32, fp16=False, bf16=False, pipeline_dtype=torch.float32, autocast_dtype=None,
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=1, context_parallel_size=1,
        sequence_parallel=False, transformer_layer_spec=local_layer_spec,
        cross_entropy_loss_fusion=False,
    )
    fields.update(transformer_config_settings())
    fields.update(overrides)
    return GPTModelProvider(**fields)


def fixed_sample(index: int, *, seed: int = 0, seq_length: int = SEQ_LENGTH, vocab: int = TOKENIZER_VOCAB,
                 prompt_length: int = 4) -> dict[str, torch.Tensor]:
    """Sample ``index`` of the fixed dataset: a pure function of its arguments (fields: module docstring)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if not 0 <= prompt_length < seq_length:
        raise ValueError(f"prompt_length must be in [0, seq_length), got {prompt_length}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    tokens = torch.randint(0, vocab, (seq_length,), generator=generator, dtype=torch.int64)
    loss_mask = torch.ones(seq_length, dtype=torch.float32)
    loss_mask[:prompt_length] = 0.0
    return {"tokens": tokens, "labels": torch.roll(tokens, -1), "loss_mask": loss_mask,
            "position_ids": torch.arange(seq_length, dtype=torch.int64)}


class FixedTokenDataset(torch.utils.data.Dataset):
    """``length`` samples of `fixed_sample` (a map-style dataset for Bridge's samplers)."""

    def __init__(self, length: int, **sample_kwargs: Any) -> None:
        self.length = length
        self.sample_kwargs = sample_kwargs

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return fixed_sample(int(index), **self.sample_kwargs)


@functools.lru_cache(maxsize=None)
def dataset_provider_class():
    """The `FixedTokenDatasetProvider` class (built on first use: Bridge imports only after the TE stand-in)."""
    from megatron.bridge.training.config import DatasetProvider

    @dataclass(kw_only=True)
    class FixedTokenDatasetProvider(DatasetProvider):
        """Bridge ``DatasetProvider`` serving `FixedTokenDataset` for training; no validation or test split."""

        seq_length: int = SEQ_LENGTH
        seed: int = 0
        prompt_length: int = 4
        vocab: int = TOKENIZER_VOCAB
        dataloader_type: Optional[str] = "single"
        num_workers: int = 0
        pin_memory: bool = False

        def build_datasets(self, context):
            dataset = FixedTokenDataset(context.train_samples, seed=self.seed, seq_length=self.seq_length,
                                        vocab=self.vocab, prompt_length=self.prompt_length)
            return dataset, None, None

    return FixedTokenDatasetProvider


def fixed_dataset_provider(**fields: Any):
    """A `FixedTokenDatasetProvider` instance with these fields (seq_length, seed, prompt_length, vocab, ...)."""
    return dataset_provider_class()(**fields)


def micro_batch(iteration: int, micro: int, *, micro_batch_size: int, global_batch_size: int,
                data_parallel_rank: int = 0, data_parallel_size: int = 1, **sample_kwargs: Any
                ) -> dict[str, torch.Tensor]:
    """The micro-batch Bridge feeds data-parallel rank ``data_parallel_rank`` as micro-batch ``micro`` of
    (0-based) ``iteration``: fields of `fixed_sample` stacked to ``[micro_batch_size, seq_length]``.

    Mirrors ``MegatronPretrainingSampler``: consecutive chunks of ``micro_batch_size * data_parallel_size``
    samples, rank r taking the r-th slice of each chunk; an iteration consumes ``global_batch_size`` samples.
    """
    per_chunk = micro_batch_size * data_parallel_size
    if global_batch_size % per_chunk:
        raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of micro_batch_size * "
                         f"data_parallel_size = {per_chunk}")
    num_micro = global_batch_size // per_chunk
    if not 0 <= micro < num_micro:
        raise ValueError(f"micro must be in [0, {num_micro}), got {micro}")
    start = (iteration * num_micro + micro) * per_chunk + data_parallel_rank * micro_batch_size
    samples = [fixed_sample(i, **sample_kwargs) for i in range(start, start + micro_batch_size)]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


# ----------------------------------------------------------------------------------------------------------------
# ConfigContainer
# ----------------------------------------------------------------------------------------------------------------


def tiny_finetune_config(*, run_dir: str, tensor_parallel: int = 1, train_iters: int = 3,
                         micro_batch_size: int = 2, global_batch_size: int = 4, lr: float = 1e-3,
                         seed: int = 1234, data_seed: int = 0, pretrained_checkpoint: Optional[str] = None,
                         save: Optional[str] = None, load: Optional[str] = None, save_interval: Optional[int] = None,
                         model=None, peft=None, clip_grad: float = 1.0):
    """A ``ConfigContainer`` for Bridge's ``finetune()`` / ``pretrain()`` on the tiny GPT and the fixed data.

    ``run_dir`` receives Bridge's run files; ``model`` defaults to ``tiny_gpt_provider(tensor_parallel=...)``;
    ``save``/``load``/``save_interval``/``pretrained_checkpoint`` go to ``CheckpointConfig`` as they are.
    """
    from megatron.bridge.training.config import (CheckpointConfig, ConfigContainer, DistributedDataParallelConfig,
                                                 DistributedInitConfig, LoggerConfig, OptimizerConfig, RNGConfig,
                                                 SchedulerConfig, TrainingConfig)
    from megatron.bridge.training.tokenizers.config import TokenizerConfig

    os.makedirs(run_dir, exist_ok=True)
    if model is None:
        model = tiny_gpt_provider(tensor_parallel=tensor_parallel)
    return ConfigContainer(
        train=TrainingConfig(train_iters=train_iters, micro_batch_size=micro_batch_size,
                             global_batch_size=global_batch_size, eval_interval=max(train_iters, 1),
                             eval_iters=0),
        model=model,
        optimizer=OptimizerConfig(optimizer="adam", lr=lr, min_lr=lr, weight_decay=0.0, adam_beta1=0.9,
                                  adam_beta2=0.999, adam_eps=1e-8, clip_grad=clip_grad, bf16=False, fp16=False,
                                  params_dtype=torch.float32, use_distributed_optimizer=False),
        ddp=DistributedDataParallelConfig(use_distributed_optimizer=False, overlap_grad_reduce=False,
                                          overlap_param_gather=False, grad_reduce_in_fp32=True,
                                          check_for_nan_in_grad=True),
        scheduler=SchedulerConfig(lr_decay_style="constant", lr_warmup_iters=0, lr_decay_iters=train_iters,
                                  start_weight_decay=0.0, end_weight_decay=0.0, weight_decay_incr_style="constant"),
        dataset=fixed_dataset_provider(seq_length=model.seq_length, seed=data_seed),
        logger=LoggerConfig(log_interval=1, tensorboard_dir=None, log_timers_to_tensorboard=False,
                            log_progress=False),
        tokenizer=TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=TOKENIZER_VOCAB),
        checkpoint=CheckpointConfig(save=save, load=load, save_interval=save_interval,
                                    pretrained_checkpoint=pretrained_checkpoint, ckpt_format="torch_dist",
                                    async_save=False, use_persistent_ckpt_worker=False, fully_parallel_save=False,
                                    save_tokenizer_assets=False),
        dist=DistributedInitConfig(distributed_backend="gloo", disable_jit_fuser=True, use_gloo_process_groups=True),
        rng=RNGConfig(seed=seed),
        mixed_precision=None,
        peft=peft,
    )


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def make_pretrained_checkpoint(path: str, *, seed: int = 4321, tensor_parallel: Optional[int] = None,
                               provider=None) -> None:
    """Save deterministic weights of ``provider`` (default: the tiny GPT) as a Bridge checkpoint at ``path``.

    Collective over the default group; call it from a `run_ranks` body. ``tensor_parallel`` defaults to the
    world size. Initialises megatron's model-parallel state for the save and destroys it (and the rerun state machine the save
    creates) afterwards.
    """
    from megatron.bridge.training.initialize import destroy_global_state
    from megatron.bridge.training.model_load_save import save_megatron_model
    from megatron.core import parallel_state, tensor_parallel as mcore_tp

    tp = tensor_parallel or torch.distributed.get_world_size()
    provider = provider if provider is not None else tiny_gpt_provider(tensor_parallel=tp)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    try:
        torch.manual_seed(seed)
        mcore_tp.model_parallel_cuda_manual_seed(seed)
        provider.finalize()
        model = provider.provide_distributed_model(wrap_with_ddp=False, use_cpu_initialization=True,
                                                   mixed_precision_wrapper=None)
        save_megatron_model(model, path)
    finally:
        destroy_global_state()  # Bridge's own teardown: model-parallel state, rerun state machine (the save made one)


# megatron-core's local spec saves its norms under TransformerEngine's fused-layer names
# (get_gpt_layer_local_spec's sharded_state_dict_keys_map); this maps them back to the module names.
_CHECKPOINT_TO_LOCAL = (("self_attention.linear_qkv.layer_norm_", "input_layernorm."),
                        ("mlp.linear_fc1.layer_norm_", "pre_mlp_layernorm."))


def load_checkpoint_weights(path: str, *, as_parameter_names: bool = True) -> dict[str, torch.Tensor]:
    """The full (unsharded) model tensors of a ``torch_dist`` checkpoint directory (its latest iteration).

    Reads the files directly with torch's DCP reader, so it needs no process group. Optimizer, RNG and
    ``_extra_state`` entries are left out. In the files, the transformer layers are stacked along a leading
    layer dimension (``decoder.layers.self_attention.linear_qkv.weight``: ``[num_layers, ...]``) and the norms of
    the local spec carry TE's fused names (``...linear_qkv.layer_norm_weight``). With ``as_parameter_names``
    (default) the result uses the unwrapped ``GPTModel``'s ``named_parameters()`` names and shapes instead
    (``decoder.layers.0.input_layernorm.weight``), i.e. what a TP=1 model holds.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    iteration_dir = path
    tracker = os.path.join(path, "latest_checkpointed_iteration.txt")
    if os.path.exists(tracker):
        with open(tracker) as handle:
            text = handle.read().strip()
        iteration_dir = os.path.join(path, "release" if text == "release" else f"iter_{int(text):07d}")
    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(iteration_dir), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    stored = {key: value for key, value in state.items()
              if isinstance(value, torch.Tensor) and not key.startswith(("optimizer", "rng", "rerun"))
              and "_extra_state" not in key}
    if not as_parameter_names:
        return stored
    named = {}
    for key, value in stored.items():
        if not key.startswith("decoder.layers."):
            named[key] = value
            continue
        rest = key[len("decoder.layers."):]
        for saved, local in _CHECKPOINT_TO_LOCAL:
            if rest.startswith(saved):
                rest = local + rest[len(saved):]
        for layer, tensor in enumerate(value.unbind(0)):
            named[f"decoder.layers.{layer}.{rest}"] = tensor.clone()
    return named


# ----------------------------------------------------------------------------------------------------------------
# Recording and running
# ----------------------------------------------------------------------------------------------------------------


class LossRecorder:
    """Wraps a Bridge forward step; records what its ``loss_func`` returns, per micro-batch, on this rank.

    ``records``: list of dicts ``{"iteration": int (0-based, Bridge's train_state.step when the forward ran),
    "loss_sum": float, "num_tokens": int, "report": {name: [sum, count] as floats}}`` in call order. Only ranks of
    the last pipeline stage compute losses.
    """

    def __init__(self, forward_step: Callable) -> None:
        from megatron.bridge.training.utils.train_utils import needs_global_state_injection

        self.forward_step = forward_step
        self.inject_state = needs_global_state_injection(forward_step)
        self.records: list[dict] = []

    def __call__(self, state, data_iterator, model, return_schedule_plan: bool = False):
        args = (state, data_iterator, model) if self.inject_state else (data_iterator, model)
        if return_schedule_plan:
            output, loss_func = self.forward_step(*args, return_schedule_plan=True)
        else:
            output, loss_func = self.forward_step(*args)
        iteration = int(state.train_state.step)

        def recorded_loss_func(output_tensor, *extra, **kwargs):
            result = loss_func(output_tensor, *extra, **kwargs)
            loss_sum, num_tokens, report = result
            self.records.append({
                "iteration": iteration,
                "loss_sum": float(loss_sum.detach().double()),
                "num_tokens": int(num_tokens),
                "report": {name: [float(v) for v in torch.as_tensor(value).detach().double().reshape(-1)]
                           for name, value in report.items()},
            })
            return result

        return output, recorded_loss_func


def per_iteration_losses(records: list[dict]) -> list[float]:
    """Token-weighted mean loss of each iteration (sum of loss sums / sum of token counts) from `LossRecorder`."""
    totals: dict[int, list[float]] = {}
    for record in records:
        entry = totals.setdefault(record["iteration"], [0.0, 0])
        entry[0] += record["loss_sum"]
        entry[1] += record["num_tokens"]
    return [totals[it][0] / totals[it][1] for it in sorted(totals)]


@functools.lru_cache(maxsize=None)
def _weight_capture_class():
    from megatron.bridge.training.callbacks import Callback
    from megatron.core.utils import unwrap_model

    class WeightCapture(Callback):
        """Keeps a CPU copy of this rank's parameters (per chunk, by name) at ``on_train_end``."""

        def __init__(self) -> None:
            self.weights: list[dict[str, torch.Tensor]] = []
            self.loss_dicts: list[dict[str, float]] = []

        def on_train_step_end(self, context) -> None:
            self.loss_dicts.append({k: float(torch.as_tensor(v).double().reshape(-1)[0])
                                    for k, v in (context.loss_dict or {}).items()})

        def on_train_end(self, context) -> None:
            self.weights = [{name: param.detach().clone().cpu() for name, param in chunk.named_parameters()}
                            for chunk in unwrap_model(context.model)]

    return WeightCapture


def weight_capture():
    """A new `WeightCapture` callback (class built lazily: Bridge is importable only after the TE stand-in)."""
    return _weight_capture_class()()


def run_finetune(cfg, forward_step: Callable, callbacks: Optional[list] = None) -> None:
    """Bridge's ``finetune(cfg, forward_step)``; with ``callbacks``, its checks then ``pretrain(..., callbacks)``."""
    from megatron.bridge.training.finetune import finetune
    from megatron.bridge.training.pretrain import pretrain

    if not callbacks:
        finetune(cfg, forward_step)
        return
    if cfg.checkpoint.pretrained_checkpoint is None and cfg.checkpoint.load is None:
        raise ValueError("finetuning needs checkpoint.pretrained_checkpoint or checkpoint.load")
    pretrain(cfg, forward_step, callbacks)
