"""Which Megatron-Bridge configurations MFT supports: `check_mft_config` raises a clear error otherwise.

Supported: a GPT model provider (``megatron.bridge.models.gpt_provider.GPTModelProvider``, any subclass: Llama,
Qwen, ...), tensor and data parallelism (sequence parallelism included), distributed (torch_dist) checkpoints, and
either a frozen teacher copy or Bridge LoRA (``megatron.bridge.peft.lora.LoRA``, teacher = adapters off).

Refused, and why:
- pipeline parallelism with a teacher: stages would exchange [S, B, 2H] (student and teacher activations);
  Bridge 0.3.1's ``train_step`` passes megatron-core only ModelOpt's ``adjust_tensor_shapes_fn`` (for its own
  ``DistillationModel``), so the receive buffers would have the wrong shape. ``ft`` (no teacher) is fine.
- virtual pipeline stages, context parallelism, multi-token prediction: not supported by `MFTModel` / the loss.
- Megatron FSDP / torch FSDP2 (and its fsdp_dtensor checkpoints), the meta-device init: the frozen copy lives
  outside the sharded wrappers and needs real initial weights.
- other PEFT methods than LoRA (DoRA, canonical LoRA): their adapters-off forward is not verified.
- ``mft.l2_init_weight > 0``: the L2-to-initial-weights baseline needs our own loop's optimizer hook.
"""

from __future__ import annotations

from megatron.bridge.models.gpt_provider import GPTModelProvider
from megatron.bridge.peft.lora import LoRA

from nemo_mft.config.schema import MFTSection

__all__ = ["check_mft_config"]


def _fail(message: str) -> None:
    raise ValueError(f"MFT under Megatron-Bridge: {message}")


def check_mft_config(config, mft: MFTSection) -> None:
    """ValueError / TypeError unless ``config`` (a Bridge ``ConfigContainer``) can train with ``mft``."""
    if not isinstance(mft, MFTSection):
        raise TypeError(f"mft must be a nemo_mft.config.schema.MFTSection, got {type(mft).__name__}")
    objective = mft.objective  # validated by MFTSection itself
    model = getattr(config, "model", None)
    if not isinstance(model, GPTModelProvider):
        raise TypeError(f"config.model must be a Megatron-Bridge GPTModelProvider (Llama, Qwen, ... providers), "
                        f"got {type(model).__name__}")
    if mft.l2_init_weight > 0:
        _fail(f"mft.l2_init_weight={mft.l2_init_weight:g} is not supported (the L2-to-initial-weights baseline "
              "runs in nemo_mft's own loop only); set it to 0")
    if objective.uses_teacher and (model.pipeline_model_parallel_size or 1) > 1:
        _fail(f"pipeline_model_parallel_size={model.pipeline_model_parallel_size} with method "
              f"{objective.method!r}: the stages would exchange student and teacher activations [S, B, 2H], and "
              "Bridge's train_step cannot pass megatron-core the matching adjust_tensor_shapes_fn; use tensor or "
              "data parallelism, or nemo_mft's own loop (nemo-mft finetune) for pipeline parallelism")
    if model.virtual_pipeline_model_parallel_size is not None:
        _fail("virtual pipeline stages (virtual_pipeline_model_parallel_size) are not supported")
    if (model.context_parallel_size or 1) != 1:
        _fail(f"context_parallel_size={model.context_parallel_size} is not supported; use 1")
    if (getattr(model, "mtp_num_layers", None) or 0) > 0:
        _fail("multi-token prediction (mtp_num_layers > 0) is not supported")
    dist = getattr(config, "dist", None)
    if dist is not None and (getattr(dist, "use_megatron_fsdp", False) or getattr(dist, "use_torch_fsdp2", False)):
        _fail("Megatron FSDP / torch FSDP2 are not supported (the frozen teacher lives outside the FSDP wrapper); "
              "use the distributed optimizer instead")
    if getattr(model, "init_model_with_meta_device", False) and objective.uses_teacher:
        _fail("init_model_with_meta_device is not supported with a teacher")
    checkpoint = getattr(config, "checkpoint", None)
    ckpt_format = getattr(checkpoint, "ckpt_format", "torch_dist")
    if ckpt_format == "fsdp_dtensor":
        _fail("checkpoint.ckpt_format='fsdp_dtensor' (FSDP) is not supported; use 'torch_dist'")
    packing = getattr(getattr(config, "dataset", None), "packed_sequence_specs", None)
    if packing is not None and (getattr(packing, "packed_sequence_size", -1) or -1) > 0:
        _fail("packed sequences (dataset.packed_sequence_specs) are not supported: the MFT forward step runs the "
              "student and teacher on padded micro-batches; set dataset.packed_sequence_specs=null")
    peft = getattr(config, "peft", None)
    if peft is not None and not isinstance(peft, LoRA):
        _fail(f"config.peft is {type(peft).__name__}; only megatron.bridge.peft.lora.LoRA is supported (its "
              "adapters-off model is the teacher)")
