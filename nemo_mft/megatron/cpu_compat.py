"""Run megatron-core 0.16.1 on a machine WITHOUT a CUDA device (tests, CPU smoke runs over gloo).

megatron-core hard-codes CUDA in code paths that are otherwise device-agnostic. Inside the context
manager `megatron_on_cpu` they are redirected to the CPU, when, and only when, ``torch.cuda.is_available()``
is False; on a machine with a CUDA device it changes nothing, so GPU runs never see any of this. The entry
points enter it (the CLI commands, the tests' spawned ranks) and leave it when they finish, which puts
back every patched function: importing a module of this package changes nothing.

What is patched, and why:

1. A `torch.overrides.TorchFunctionMode` (pushed for the calling thread, which is the thread that runs
   the model, the schedule and the optimizer; autograd runs CPU backward on that thread too) that
   rewrites CUDA devices to ``cpu`` in every torch call: ``device="cuda"`` / ``device=<int>`` in factory
   functions (``torch.zeros(..., device="cuda")`` in the schedules' token counters, the DDP grad buffers,
   ``clip_grads``; ``torch.empty(..., device=torch.cuda.current_device())`` in the p2p receive buffers),
   ``Tensor.cuda()`` and ``Tensor.to("cuda")``.
2. ``torch.cuda.current_device`` -> 0 (an index the mode maps to the CPU) and ``torch.cuda.synchronize``,
   ``torch.cuda.empty_cache`` -> no-ops: called directly by p2p communication and DDP.
3. The CUDA RNG used by megatron's `CudaRNGStatesTracker` (``torch.cuda.get_rng_state``,
   ``torch.cuda.set_rng_state``, ``torch.cuda.manual_seed``, and ``tensor_parallel.random``'s
   ``_get_cuda_rng_state`` / ``_set_cuda_rng_state``) -> the CPU default generator. Without a CUDA build
   ``torch.cuda.manual_seed`` / ``set_rng_state`` are silently queued and never run, so the tracker's
   ``fork()`` would not restore the RNG; on the CPU generator the tracker keeps its GPU meaning
   (per-TP-rank dropout streams swapped in and out around model-parallel regions). Consequence: with
   dropout > 0 megatron logs "CPU RNG state changed within GPU RNG context" on every fork; expected here,
   since the tracked stream IS the CPU generator.
4. ``clip_grad_by_total_norm_fp32`` as imported by ``megatron.core.optimizer.optimizer``: the original
   asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``; the replacement does the same scaling
   (grad *= max_norm / (total_norm + 1e-6) when that is < 1) on CPU tensors.

Nothing here touches megatron model code; the model, schedules, DDP and optimizer run unmodified.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["megatron_on_cpu", "cpu_fallback_active"]

_LOCK = threading.Lock()
_DEPTH = 0  # nesting depth of megatron_on_cpu() in this process (patches are applied at depth 1)


def _to_cpu_device(device: Any) -> Any:
    """Map a CUDA device spec (str, torch.device, or an int index) to ``"cpu"``; leave others unchanged."""
    if isinstance(device, bool):
        return device
    if isinstance(device, int):
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of torch calls to the CPU (see module docstring, item 1)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            # tensor.cuda(device=None, non_blocking=False, memory_format=...) -> the tensor itself.
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1:
            # tensor.to("cuda") / tensor.to(torch.device("cuda")) / tensor.to(0); dtype and tensor
            # arguments pass through unchanged.
            first = args[1]
            if isinstance(first, (str, torch.device, int)) and not isinstance(first, bool):
                args = (args[0], _to_cpu_device(first), *args[2:])
        return func(*args, **kwargs)


def _cpu_get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _cpu_tracker_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _cpu_clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """CPU twin of megatron.core.optimizer.clip_grads.clip_grad_by_total_norm_fp32 (no CUDA type assert)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is not None:
            grads.append(grad.detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for grad in grads:
            grad.mul_(clip_coeff)


def _patches() -> list[tuple[Any, str, Any]]:
    """(owner, attribute, replacement) for items 2-4 of the module docstring."""
    import megatron.core.optimizer.optimizer as megatron_optimizer
    import megatron.core.tensor_parallel.random as megatron_random

    return [
        (torch.cuda, "current_device", lambda: 0),
        (torch.cuda, "synchronize", lambda device=None: None),
        (torch.cuda, "empty_cache", lambda: None),
        (torch.cuda, "get_rng_state", _cpu_get_rng_state),
        (torch.cuda.random, "get_rng_state", _cpu_get_rng_state),
        (torch.cuda, "set_rng_state", _cpu_set_rng_state),
        (torch.cuda.random, "set_rng_state", _cpu_set_rng_state),
        (torch.cuda, "manual_seed", torch.manual_seed),
        (torch.cuda.random, "manual_seed", torch.manual_seed),
        (megatron_random, "_get_cuda_rng_state", _cpu_tracker_get_rng_state),
        (megatron_random, "_set_cuda_rng_state", _cpu_set_rng_state),
        (megatron_optimizer, "clip_grad_by_total_norm_fp32", _cpu_clip_grad_by_total_norm_fp32),
    ]


def cpu_fallback_active() -> bool:
    """True inside `megatron_on_cpu` on a machine without CUDA (the redirect is in force)."""
    return _DEPTH > 0


@contextlib.contextmanager
def megatron_on_cpu() -> Iterator[bool]:
    """Run megatron-core on the CPU inside this block when no CUDA device exists; yields whether it does.

    On a machine with CUDA it yields False and changes nothing. Otherwise it patches the functions of the
    module docstring and pushes the device-rewriting mode for the calling thread (the thread that must
    run the model), and undoes both on exit. Re-entrant: a nested block is a no-op.
    """
    global _DEPTH
    if torch.cuda.is_available():
        yield False
        return
    with _LOCK:
        _DEPTH += 1
        outermost = _DEPTH == 1
        saved = []
        if outermost:
            for owner, name, replacement in _patches():
                saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, replacement)
    try:
        if outermost:
            with _CudaToCpuMode():
                yield True
        else:
            yield True
    finally:
        with _LOCK:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)
            _DEPTH -= 1
