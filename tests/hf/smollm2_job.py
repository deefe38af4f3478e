"""The spawned job behind tests/hf/test_smollm2_import.py: the real SmolLM2-135M-Instruct imported with
`nemo_mft.hf` at several layouts, a forward on a short sentence (logits) and a per-token loss on a longer text.

SmolLM2-135M has 9 query heads in 3 key/value groups, so tensor parallelism can only be 1 or 3 (megatron
splits attention by whole query groups): the TP case is TP=3. A 3-rank gloo world runs TP=1, TP=3 and PP=3
(10 layers a stage, a middle stage included); the same ranks 0 and 1 then join a fresh 2-rank world for PP=2
(15 layers a stage) while rank 2 leaves.

Returns (rank 0) per layout: the sentence's logits [1, S, vocab] and the text's per-token cross-entropy [1, T]
computed by megatron-core itself (GPTModel.forward with labels: vocab-parallel cross-entropy at TP=3).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

LAYOUTS_3 = ((1, 1), (3, 1), (1, 3))
LAYOUTS_2 = ((1, 2),)


def _stage_forward(layout, gpt, tokens: torch.Tensor, hidden_size: int, labels=None) -> torch.Tensor:
    """The last stage's output (logits [b, s, local vocab] or loss [b, s]) on every rank of the pipeline."""
    batch, seq = tokens.shape
    positions = torch.arange(seq).expand_as(tokens)
    pp_ranks = dist.get_process_group_ranks(layout.groups.pp)
    if not layout.is_first_stage:
        hidden = torch.empty(seq, batch, hidden_size)
        dist.recv(hidden, src=pp_ranks[layout.pp_rank - 1])
        gpt.set_input_tensor(hidden)
    out = gpt(tokens, positions, attention_mask=None, labels=labels)
    if layout.pp_size == 1:
        return out
    if not layout.is_last_stage:
        dist.send(out.contiguous(), dst=pp_ranks[layout.pp_rank + 1])
    result_shape = (batch, seq) if labels is not None else (batch, seq, gpt.vocab_size // layout.tp_size)
    if layout.is_last_stage:
        for dst in pp_ranks[:-1]:
            dist.send(out.contiguous(), dst=dst)
        return out
    result = torch.empty(result_shape)
    dist.recv(result, src=pp_ranks[-1])
    return result


def _run_layout(layout, hf_dir: str, sentence: torch.Tensor, text: torch.Tensor, labels: torch.Tensor):
    from nemo_mft.hf import describe, gpt_options, layer_spec, load_hf_into, read_config, transformer_config
    from nemo_mft.megatron import build_model

    seq = max(sentence.shape[1], text.shape[1])
    model = describe(read_config(hf_dir), seq_length=seq)
    opts = gpt_options(model, tp_size=layout.tp_size, seq_length=seq)
    config = transformer_config(model, tp_size=layout.tp_size, pp_size=layout.pp_size)
    gpt = build_model(config, layer_spec(model), opts, groups=layout.groups, with_teacher=False)[0].student.eval()
    load_hf_into(gpt, hf_dir, model, layout.groups)
    with torch.no_grad():
        logits = _stage_forward(layout, gpt, sentence, model.hidden_size)
        parts = [torch.empty_like(logits) for _ in range(layout.tp_size)]
        dist.all_gather(parts, logits.contiguous(), group=layout.groups.tp)
        loss = _stage_forward(layout, gpt, text, model.hidden_size, labels=labels)
    full = torch.cat(parts, dim=-1)[..., : model.vocab_size]
    del gpt
    return full, loss.detach().clone()


def run_all(rank: int, world_size: int, hf_dir: str, port: int, sentence, text, labels) -> dict:
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, megatron_on_cpu

    logits, losses = {}, {}
    with megatron_on_cpu():
        for tp, pp in LAYOUTS_3:
            layout = initialize_parallel(tp, pp, seed=3)
            logits[(tp, pp)], losses[(tp, pp)] = _run_layout(layout, hf_dir, sentence, text, labels)
            destroy_parallel()
        dist.destroy_process_group()
        if rank < 2:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
            for tp, pp in LAYOUTS_2:
                layout = initialize_parallel(tp, pp, seed=3)
                logits[(tp, pp)], losses[(tp, pp)] = _run_layout(layout, hf_dir, sentence, text, labels)
                destroy_parallel()
    return {"logits": logits, "losses": losses}
