"""LoRA adapters on megatron-core's tensor-parallel linear layers, switchable off for the MFT teacher.

An adapter adds ``delta(x)`` to the output of one linear layer of the student (a forward hook: the base
module, its parameters and its state-dict keys are untouched). `AdapterSet` holds every adapter of one
pipeline stage as a registered module tree, so DDP, the optimizer and checkpoints see the adapters, while
`AdapterSet.disabled` turns them all off for a forward: with adapters, the MFT teacher is the same module
with its adapters off, and no weight is held twice.

LoRA (``delta(x) = alpha / r * B A dropout(x)``) under tensor parallelism, T = TP size, without sequence
parallelism (the inputs of column-parallel layers and the outputs of row-parallel ones are replicated):

    column-parallel (linear_qkv, linear_fc1; weight [out/T, in]):
        A [r, in] replicated, B [out/T, r] split like the layer's output rows.
        y = x A^T, then the gradient of y is all-reduced over TP (each rank's B slice sees part of it)
        (`copy_to_tensor_model_parallel_region`), delta = y B^T: this rank's output columns.
    row-parallel (linear_proj, linear_fc2; weight [out, in/T]):
        A [r, in/T] split like the layer's input columns, B [out, r] replicated.
        y = all-reduce over TP of x_t A_t^T (`reduce_from_tensor_model_parallel_region`), delta = y B^T.

TransformerEngine's spec fuses the pre-attention / pre-MLP norm into linear_qkv / linear_fc1 (LayerNorm +
Linear in one module), so the hooked input is the layer's un-normalized input there; the adapter applies
the layer's own norm first (`fused_input_norm`), and sees what the local spec's separate norm gives it.

So every replicated adapter tensor gets the same gradient on all TP ranks, and the split ones carry
megatron's ``tensor_model_parallel`` attributes (counted once per shard in the gradient norm). The initial
A is drawn from a generator seeded by (seed, the adapter's global name), for the full [r, in] matrix, then
sliced: the same initial adapters under every TP/PP layout. B starts at zero, so step 0 is the base model.
Keys are global (``decoder.layers.<global layer>.<module>.lora_a``), so checkpoints load in any layout.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                    reduce_from_tensor_model_parallel_region)
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

__all__ = ["LORA_TARGETS", "TARGET_PATHS", "LoRAConfig", "Adapter", "LoRAAdapter", "AdapterSet", "attach_lora",
           "fused_input_norm", "lora_factory"]

# Megatron-Bridge's target names: the four linear layers of a transformer layer (local and TE specs), and each
# one's module path inside a layer (an adapter's key is ``decoder.layers.<global layer>.<path>``).
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
TARGET_PATHS = {"linear_qkv": "self_attention.linear_qkv", "linear_proj": "self_attention.linear_proj",
                "linear_fc1": "mlp.linear_fc1", "linear_fc2": "mlp.linear_fc2"}


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA hyper-parameters: rank ``dim``, scale ``alpha / dim``, input ``dropout``, the target layers."""

    dim: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {self.dim!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        unknown = sorted(set(self.target_modules) - set(LORA_TARGETS))
        if unknown or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {list(LORA_TARGETS)}, got "
                             f"{list(self.target_modules)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.dim


def _parallel_mode(module: torch.nn.Module) -> str:
    """"column" or "row" for megatron's local linear layers (and TransformerEngine's, by ``parallel_mode``)."""
    if isinstance(module, ColumnParallelLinear):
        return "column"
    if isinstance(module, RowParallelLinear):
        return "row"
    mode = getattr(module, "parallel_mode", None)
    if mode in ("column", "row"):
        return mode
    raise TypeError(f"{type(module).__name__} is not a tensor-parallel linear layer LoRA can adapt")


def fused_input_norm(base: torch.nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The norm a TransformerEngine LayerNorm+Linear layer applies to its input before its matmul, as a
    function of that input [..., in] (computed in fp32, returned in the input's dtype); None for a layer
    without a fused norm (megatron-core's local linear layers, TE's plain Linear)."""
    if getattr(base, "layer_norm_weight", None) is None:
        return None
    kind = base.normalization
    if kind not in ("RMSNorm", "LayerNorm"):
        raise ValueError(f"LoRA on a fused {kind} layer is not supported (RMSNorm and LayerNorm are)")

    def norm(x: torch.Tensor) -> torch.Tensor:
        weight = base.layer_norm_weight.float()
        if base.zero_centered_gamma:
            weight = weight + 1.0
        shape = (x.shape[-1],)
        if kind == "RMSNorm":
            out = F.rms_norm(x.float(), shape, weight, base.eps)
        else:
            out = F.layer_norm(x.float(), shape, weight, base.layer_norm_bias.float(), base.eps)
        return out.to(x.dtype)

    return norm


def _seeded_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


class Adapter(torch.nn.Module):
    """An additive adapter of one linear layer: ``forward(x)`` is the delta added to the layer's output.

    Subclasses define the parameters, the delta and ``tp_axes`` ({parameter name: the axis split over TP}).
    """

    tp_axes: dict[str, int] = {}

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        return make_sharded_tensors_for_checkpoint(self.state_dict(prefix="", keep_vars=True), prefix,
                                                   self.tp_axes, sharded_offsets, tp_group=self.tp_group,
                                                   dp_cp_group=self.dp_cp_group)


class LoRAAdapter(Adapter):
    """LoRA on one column- or row-parallel layer (see the module docstring for the TP layout).

    Parameters: ``lora_a`` [r, in or in/T], ``lora_b`` [out/T or out, r], in ``dtype``. ``name``: the global
    name that seeds A's initialization. Sizes come from the base weight [out or out/T, in/T or in], so local
    and TransformerEngine layers are adapted alike.
    """

    def __init__(self, base: torch.nn.Module, config: LoRAConfig, *, name: str, seed: int, tp_group, dp_cp_group,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.mode = _parallel_mode(base)
        self.tp_group, self.dp_cp_group = tp_group, dp_cp_group
        self.scale, r = config.scale, config.dim
        self.dropout = torch.nn.Dropout(config.dropout) if config.dropout > 0 else torch.nn.Identity()
        self.input_norm = fused_input_norm(base)
        tp_rank = tp_group.rank()
        out, local_in = base.weight.shape
        if self.mode == "column":
            full_in, a_cols = local_in, (0, local_in)
            self.tp_axes = {"lora_b": 0}
        else:
            full_in, a_cols = local_in * tp_group.size(), (tp_rank * local_in, (tp_rank + 1) * local_in)
            self.tp_axes = {"lora_a": 1}
        full_a = torch.empty(r, full_in)
        torch.nn.init.kaiming_uniform_(full_a, a=math.sqrt(5), generator=_seeded_generator(seed, name))  # as PEFT
        device = base.weight.device
        self.lora_a = torch.nn.Parameter(full_a[:, a_cols[0]:a_cols[1]].to(device=device, dtype=dtype).contiguous())
        self.lora_b = torch.nn.Parameter(torch.zeros(out, r, device=device, dtype=dtype))
        split = "lora_b" if self.mode == "column" else "lora_a"
        set_tensor_model_parallel_attributes(getattr(self, split), True, self.tp_axes[split], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm is not None:
            x = self.input_norm(x)
        y = F.linear(self.dropout(x), self.lora_a)
        if self.mode == "column":
            y = copy_to_tensor_model_parallel_region(y, group=self.tp_group)
        else:
            y = reduce_from_tensor_model_parallel_region(y, group=self.tp_group)
        return F.linear(y, self.lora_b) * self.scale


class AdapterSet(torch.nn.Module):
    """The adapters of one student pipeline stage, keyed by their global names, with an off switch.

    ``adapters[key]`` for ``key = "decoder.layers.<global layer>.<module path>"`` (dots stored as "__"
    inside the ModuleDict). Each adapter is applied by a forward hook on its base layer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adapters = torch.nn.ModuleDict()
        self._enabled = True
        self._hooks: list = []

    @staticmethod
    def _slot(key: str) -> str:
        return key.replace(".", "__")

    def add(self, key: str, base: torch.nn.Module, adapter: Adapter) -> None:
        self.adapters[self._slot(key)] = adapter

        def hook(module, args, output):
            if not self._enabled:
                return output
            out, bias = output
            return out + adapter(args[0]).to(out.dtype), bias

        self._hooks.append(base.register_forward_hook(hook))

    def items(self) -> Iterator[tuple[str, Adapter]]:
        for slot, adapter in self.adapters.items():
            yield slot.replace("__", "."), adapter

    @property
    def enabled(self) -> bool:
        return self._enabled

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Every adapter of this set off inside the block (the base model's forward)."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        out = {}
        for key, adapter in self.items():
            out.update(adapter.sharded_state_dict(f"{prefix}{key}.", sharded_offsets, metadata))
        return out

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        out = {} if destination is None else destination
        for key, adapter in self.items():
            for name, tensor in adapter.state_dict(keep_vars=keep_vars).items():
                out[f"{prefix}{key}.{name}"] = tensor
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        remapped = {f"adapters.{self._slot(k.rsplit('.', 1)[0])}.{k.rsplit('.', 1)[1]}": v
                    for k, v in state_dict.items()}
        return super().load_state_dict(remapped, strict=strict, assign=assign)


def attach_lora(student: torch.nn.Module, config: LoRAConfig, *, seed: int, tp_group, dp_cp_group,
                targets: Optional[Sequence[str]] = None) -> AdapterSet:
    """LoRA adapters on ``config.target_modules`` of every decoder layer of this student stage (a GPTModel);
    freezes every base parameter of ``student``. Returns the `AdapterSet` (register it in the model)."""
    if getattr(student.config, "sequence_parallel", False):
        raise ValueError("LoRA with sequence_parallel is not supported yet (the adapters assume replicated "
                         "layer inputs); set model.sequence_parallel=false")
    student.requires_grad_(False)
    adapters = AdapterSet()
    dtype = student.config.params_dtype
    for layer in student.decoder.layers:
        global_index = layer.layer_number - 1
        for target in targets or config.target_modules:
            base = layer.get_submodule(TARGET_PATHS[target])
            key = f"decoder.layers.{global_index}.{TARGET_PATHS[target]}"
            adapters.add(key, base, LoRAAdapter(base, config, name=key, seed=seed, tp_group=tp_group,
                                                dp_cp_group=dp_cp_group, dtype=dtype))
    return adapters


def lora_factory(config: LoRAConfig, *, seed: int, groups):
    """``adapt`` for `nemo_mft.megatron.build_model`: attaches LoRA to the student stage it is given."""

    def adapt(student: torch.nn.Module) -> AdapterSet:
        return attach_lora(student, config, seed=seed, tp_group=groups.tp, dp_cp_group=groups.dp_cp)

    return adapt
