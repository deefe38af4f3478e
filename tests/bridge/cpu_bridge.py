"""TEST-ONLY: make Megatron-Bridge 0.3.1 importable and runnable on a CPU machine (gloo ranks, no CUDA).

Two steps, both for test processes only (the package ``nemo_mft`` never imports this module):

``install_stand_ins()`` (once per process, before the first ``import megatron.bridge``)
    1. Imports every megatron-core module that probes for TransformerEngine at import time (found by scanning
       megatron-core's sources for ``import transformer_engine`` / ``from transformer_engine``; 39 modules in
       megatron-core 0.16.1, about 3.5 s, mostly modules Bridge imports anyway). They all record "no TE", so
       megatron-core keeps its local (non-TE) layers, optimizers and RNG tracker.
    2. Only then puts ``tests/bridge/stand_ins`` on ``sys.path``: its TEST-ONLY ``transformer_engine`` placeholder
       package satisfies the two unconditional imports in Bridge (``megatron.bridge.peft.lora`` and
       ``megatron.bridge.peft.lora_layers`` do ``import transformer_engine.pytorch as te``). Its classes refuse to
       be built; its ``__version__`` is ``"0.0.0"``, so ``megatron.core.utils.is_te_min_version`` answers False.
    3. Imports ``megatron.bridge`` and sets ``megatron.bridge.peft.utils.HAVE_TE`` and
       ``megatron.bridge.peft.module_matcher.HAVE_TE`` to False. Both come out True: they only test that
       megatron-core's ``TELinear`` & co. can be imported, and megatron-core defines those classes over a
       ``MagicMock`` when TE is absent. False makes Bridge's LoRA wrap megatron-core's plain ``ColumnParallelLinear``
       / ``RowParallelLinear``. megatron-core's own flags (``megatron.core.extensions.transformer_engine.HAVE_TE``,
       ``megatron.core.models.gpt.gpt_layer_specs.HAVE_TE``) are asserted False.
    A process started by multiprocessing's "spawn" inherits its parent's ``sys.path``, stand-in folder included:
    ``install_stand_ins`` takes it off the path until megatron-core has probed, and `bridge_harness.run_ranks`
    unpickles the rank body only after ``install_stand_ins`` (unpickling imports the body's module).

``bridge_on_cpu()`` (a context manager around ``finetune()`` / ``pretrain()`` in each rank)
    Enters ``nemo_mft.megatron.cpu_compat.megatron_on_cpu()`` (CUDA device arguments -> CPU, CUDA RNG -> CPU
    generator, ``current_device``/``synchronize``/``empty_cache`` stand-ins, CPU grad clipping; see there) and adds
    what Bridge itself needs, each undone on exit:

    - ``megatron.bridge.training.setup.initialize_megatron`` gets ``allow_no_cuda=True``: it asserts
      ``torch.cuda.is_available()`` otherwise.
    - ``megatron.bridge.training.initialize._set_random_seed`` also seeds megatron's model-parallel RNG tracker
      (``tensor_parallel.model_parallel_cuda_manual_seed``, on the CPU generator): Bridge skips that when
      ``torch.cuda.device_count() == 0``, and then building the model fails ("cuda rng state model-parallel-rng is
      not added": megatron-core initialises weights and runs dropout inside the tracker's ``fork()``); Bridge's
      checkpoints also save and restore the tracker's states.
    - ``megatron.bridge.training.initialize._warmup_jit_function`` -> no-op: it warms CUDA fusion kernels (there are
      none on CPU) and would draw numbers from the CPU generator, shifting the weights' random streams.
    - ``megatron.bridge.training.initialize.compile_helpers`` -> no-op: ``initialize_megatron`` always runs ``make``
      on megatron-core's C++ dataset index helpers (needs pybind11 headers and a compiler; ``sys.exit(1)`` when that
      fails); only megatron's indexed (blended GPT) datasets use them, not the harness's fixed dataset.
    - ``megatron.bridge.models.conversion.param_mapping.MegatronParamMapping.scatter_to_tp_ranks`` gets contiguous
      splits: AutoBridge's HF import splits row-parallel weights (``linear_proj``, ``linear_fc2``) with
      ``torch.chunk(w, tp, dim=1)`` and moves each split to the parameter's device before a ``scatter``. On a GPU
      that ``.to("cuda")`` is a contiguous copy; on the CPU ``.to("cpu")`` returns the strided view itself, and
      gloo's ``scatter`` sends the view's underlying memory, so TP rank 1 received wrong columns (found by
      tests/bridge/test_autobridge_import.py: logits off by 1.7 at TP=2 without this, 3e-7 with it).
    - ``torch.cuda.Stream`` / ``current_stream`` / ``stream`` -> a do-nothing stream: ``_ddp_wrap`` in
      ``megatron.bridge.models.model_provider`` builds DDP on a side stream unconditionally.
    - ``torch.cuda.memory_stats`` / ``max_memory_allocated`` / ``memory_allocated`` -> zeros (Bridge's memory
      report, if a logger switch asks for it).

    Config switches that make further patches unnecessary (set by ``tests/bridge/bridge_harness.py``):
    ``dist.distributed_backend="gloo"``, ``dist.disable_jit_fuser=True`` (no torch.compile of the fused kernels on
    CPU), ``checkpoint.async_save=False`` and ``use_persistent_ckpt_worker=False`` (no background checkpoint
    process), ``dataset.num_workers=0`` and ``pin_memory=False``, ``model.gradient_accumulation_fusion=False`` and
    the other fusions off (they need TE/Apex kernels), ``logger.log_timers_to_tensorboard=False``. The harness
    initialises the gloo process group itself before calling Bridge, so Bridge's
    ``torch.distributed.barrier(device_ids=[local_rank])`` (NCCL-only argument) is never reached.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pathlib
import re
import sys
from typing import Any, Iterator

import torch

STAND_INS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stand_ins")

_TE_IMPORT = re.compile(r"^\s*(import transformer_engine|from transformer_engine)", re.M)
_installed = False


def _megatron_core_te_probing_modules() -> list[str]:
    """Dotted names of the megatron-core modules whose source imports ``transformer_engine`` (sorted)."""
    import megatron.core

    root = pathlib.Path(megatron.core.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        if _TE_IMPORT.search(path.read_text(errors="ignore")):
            parts = path.relative_to(root.parent.parent).with_suffix("").parts
            name = ".".join(parts)
            names.append(name[: -len(".__init__")] if name.endswith(".__init__") else name)
    return names


def install_stand_ins() -> None:
    """Let ``import megatron.bridge`` succeed without TransformerEngine (module docstring, first part). Idempotent.

    Raises RuntimeError if ``transformer_engine`` was imported before (a real TE install, or the stand-in put on
    the path too early): megatron-core would then have taken its TE paths.
    """
    global _installed
    if _installed:
        return
    if "transformer_engine" in sys.modules:
        raise RuntimeError(
            f"transformer_engine was imported before install_stand_ins() ({sys.modules['transformer_engine']}): "
            "either a real TE (the stand-in is for machines without it) or the stand-in put on sys.path too early, "
            "so megatron-core may have taken its TE paths"
        )
    if "megatron.bridge" in sys.modules:
        raise RuntimeError("install_stand_ins() must run before the first import of megatron.bridge")
    # A process started with multiprocessing's "spawn" inherits its parent's sys.path, stand-in folder included:
    # keep it off the path until megatron-core has probed.
    while STAND_INS_DIR in sys.path:
        sys.path.remove(STAND_INS_DIR)
    failures = {}
    for name in _megatron_core_te_probing_modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional dependency of an unused module; reported below if Bridge needs it
            failures[name] = exc
    if "transformer_engine" in sys.modules:
        raise RuntimeError(f"megatron-core imported a transformer_engine while probing: {sys.modules['transformer_engine']}")
    sys.path.insert(0, STAND_INS_DIR)
    import megatron.bridge  # noqa: F401
    import megatron.bridge.peft.module_matcher as module_matcher
    import megatron.bridge.peft.utils as peft_utils

    # True here: megatron-core defines its TE* wrapper classes over a MagicMock when TE is absent, and Bridge's
    # flags only test that the names exist. No layer of the local spec is one of them; LoRA must take its
    # plain-layer path (ColumnParallelLinear / RowParallelLinear).
    peft_utils.HAVE_TE = False
    module_matcher.HAVE_TE = False
    import megatron.core.extensions.transformer_engine as mcore_te
    import megatron.core.models.gpt.gpt_layer_specs as gpt_specs

    assert not mcore_te.HAVE_TE and not gpt_specs.HAVE_TE, "megatron-core took its TE paths"
    _installed = True


class _CpuStream:
    """Do-nothing stand-in for ``torch.cuda.Stream``: CPU work is ordered by program order already."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event


_CPU_STREAM = _CpuStream()


def _bridge_patches() -> list[tuple[Any, str, Any]]:
    """(owner, attribute, replacement) for the Bridge items of the module docstring."""
    import megatron.bridge.training.initialize as bridge_init
    import megatron.bridge.training.setup as bridge_setup
    from megatron.bridge.models.conversion.param_mapping import MegatronParamMapping
    from megatron.core import tensor_parallel

    original_set_random_seed = bridge_init._set_random_seed

    @functools.wraps(original_set_random_seed)
    def set_random_seed_and_tracker(seed_, *args, pg_collection, **kwargs):
        original_set_random_seed(seed_, *args, pg_collection=pg_collection, **kwargs)
        # Same seed derivation as Bridge's CUDA branch (seed + 100 * pp_rank), on the CPU generator.
        pp_rank = torch.distributed.get_group_rank(pg_collection.pp, torch.distributed.get_rank())
        tensor_parallel.model_parallel_cuda_manual_seed(
            seed_ + 100 * pp_rank,
            tp_rank=pg_collection.tp.rank(),
            ep_rank=pg_collection.ep.rank(),
            etp_rank=pg_collection.expt_tp.rank(),
        )

    original_scatter = MegatronParamMapping.scatter_to_tp_ranks

    @functools.wraps(original_scatter)
    def scatter_contiguous(self, splits, *args, **kwargs):
        if splits:
            splits = [split.contiguous() for split in splits]
        return original_scatter(self, splits, *args, **kwargs)

    return [
        (MegatronParamMapping, "scatter_to_tp_ranks", scatter_contiguous),
        (bridge_setup, "initialize_megatron", functools.partial(bridge_setup.initialize_megatron, allow_no_cuda=True)),
        (bridge_init, "_set_random_seed", set_random_seed_and_tracker),
        (bridge_init, "_warmup_jit_function", lambda model_config, micro_batch_size: None),
        (bridge_init, "compile_helpers", lambda: None),
        (torch.cuda, "Stream", _CpuStream),
        (torch.cuda, "current_stream", lambda device=None: _CPU_STREAM),
        (torch.cuda, "stream", lambda stream=None: contextlib.nullcontext()),
        (torch.cuda, "memory_stats", lambda device=None: {}),
        (torch.cuda, "max_memory_allocated", lambda device=None: 0),
        (torch.cuda, "memory_allocated", lambda device=None: 0),
    ]


@contextlib.contextmanager
def bridge_on_cpu() -> Iterator[None]:
    """Run Bridge's training entry points on the CPU inside this block (module docstring, second part).

    Calls ``install_stand_ins()`` first. Not re-entrant; restores every patched attribute on exit.
    """
    from nemo_mft.megatron.cpu_compat import megatron_on_cpu

    install_stand_ins()
    if torch.cuda.is_available():
        raise RuntimeError("bridge_on_cpu() is for machines without CUDA")
    saved = []
    with megatron_on_cpu():
        try:
            for owner, name, replacement in _bridge_patches():
                saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, replacement)
            yield
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)
