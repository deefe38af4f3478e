"""The spawned one-process job behind tests/finetune/test_export_lora.py: ``nemo-mft export`` of a LoRA checkpoint
(as a PEFT adapter, in bf16 from a moved copy of the base, and merged), ``nemo-mft import`` of the base (a
checkpoint of full weights, for the error cases), and our own LoRA model's logits: a TP=1 student with LoRA,
the base weights and the checkpoint's adapters loaded, run with the adapters on and off.
"""

from __future__ import annotations

import torch

from import_export_job import cli


def lora_logits(checkpoint: str, base_dir: str, tokens: torch.Tensor) -> dict:
    """Our fp32 logits [batch, seq, vocab] with the adapters on and off, and the norm of every lora_b."""
    from nemo_mft.finetune.conversion import single_process_model
    from nemo_mft.finetune.export_command import lora_settings
    from nemo_mft.megatron import megatron_on_cpu, unwrap
    from nemo_mft.training.base_model import find_base_model, load_base_weights
    from nemo_mft.training.checkpointing import load_adapter_weights, read_common_state, resolve_checkpoint

    lora = lora_settings(read_common_state(resolve_checkpoint(checkpoint)))
    base = find_base_model(base_dir, seq_length=tokens.shape[1])
    vocab = base.hf_model.vocab_size
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with megatron_on_cpu(), single_process_model(base.hf_model, dtype="float32", lora=lora) as (chunks, layout):
        load_base_weights(base, chunks, layout.groups, vocab_rows=vocab)
        load_adapter_weights(checkpoint, chunks)
        mft = unwrap(chunks[0])
        gpt = mft.student.eval()
        with torch.no_grad():
            on = gpt(tokens, positions, attention_mask=None)[..., :vocab].clone()
            with mft.adapters.disabled():
                off = gpt(tokens, positions, attention_mask=None)[..., :vocab].clone()
        b_norms = {k: v.norm().item() for k, v in mft.adapters.state_dict().items() if k.endswith("lora_b")}
    return {"on": on, "off": off, "b_norms": b_norms}


def run(rank: int, world_size: int, checkpoint: str, base_dir: str, moved_base: str, root: str,
        tokens: torch.Tensor) -> dict:
    cli("export", "--checkpoint", checkpoint, "--out", f"{root}/adapter", "--adapter")
    cli("export", "--checkpoint", checkpoint, "--out", f"{root}/adapter_bf16", "--adapter", "--dtype", "bf16",
        "--base", moved_base)
    cli("export", "--checkpoint", checkpoint, "--out", f"{root}/merged")
    cli("import", base_dir, f"{root}/full")
    return lora_logits(checkpoint, base_dir, tokens)
