"""Load the weights of a Megatron-Bridge checkpoint into modules that Bridge does not load: the MFT teacher.

Bridge loads ``checkpoint.pretrained_checkpoint`` into the student only when it starts a finetuning run; on a
resume (``checkpoint.load`` holds a checkpoint) it loads the finetuned student instead. The teacher must be the
pretrained model in both cases, so it reads the pretrained checkpoint itself, through Bridge's own reader
(``_load_model_weights_from_checkpoint``: megatron-core dist-checkpointing, this rank's shards only), from the
iteration the checkpoint's tracker file names (Bridge's ``latest_train_state.pt`` or Megatron-LM's
``latest_checkpointed_iteration.txt``), as Bridge itself picks it for a pretrained checkpoint.
"""

from __future__ import annotations

import torch
from megatron.bridge.training.checkpointing import _load_model_weights_from_checkpoint, _resolve_checkpoint_iteration
from megatron.bridge.training.utils.checkpoint_utils import checkpoint_exists, get_checkpoint_name

from nemo_mft.megatron.model import load_weights

__all__ = ["checkpoint_iteration_dir", "load_pretrained_weights"]


def checkpoint_iteration_dir(checkpoint_dir: str) -> str:
    """The iteration directory (``iter_NNNNNNN`` or ``release``) of the latest checkpoint in ``checkpoint_dir``."""
    if not checkpoint_exists(checkpoint_dir):
        raise FileNotFoundError(f"no Megatron-Bridge checkpoint in {checkpoint_dir!r} (no latest_train_state.pt or "
                                "latest_checkpointed_iteration.txt tracker file)")
    iteration, release = _resolve_checkpoint_iteration(checkpoint_dir, None)
    if iteration < 0 and not release:
        raise FileNotFoundError(f"the tracker file in {checkpoint_dir!r} names no checkpoint iteration")
    return get_checkpoint_name(checkpoint_dir, iteration, release)


@torch.no_grad()
def load_pretrained_weights(modules: list, checkpoint_dir: str) -> str:
    """Copy the model weights of the checkpoint in ``checkpoint_dir`` into ``modules`` (GPTModel stages with the
    layout the checkpoint's ``model`` section is read into: same keys as a Bridge GPT model's checkpoint).

    Strict: every weight of ``modules`` must be in the checkpoint (ValueError otherwise); only TransformerEngine's
    ``_extra_state`` entries (FP8 metadata, which Bridge's reader drops) may be missing. Bridge's own strict load
    would retry non-strictly after any mismatch and leave a missing weight uninitialized, with a log line only.
    Returns the iteration directory read.
    """
    path = checkpoint_iteration_dir(checkpoint_dir)
    loaded = _load_model_weights_from_checkpoint(path, list(modules), return_state_dict=True)
    for index, module in enumerate(modules):
        state = loaded["model"] if len(modules) == 1 else loaded.get(f"model{index}", {})
        wrong = load_weights(module, state)
        if wrong:
            raise ValueError(f"the MFT teacher does not fit the checkpoint {path}: {wrong[:5]} (missing or "
                             "unexpected); is checkpoint.pretrained_checkpoint a checkpoint of this model?")
    return path
