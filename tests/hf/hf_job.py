"""The spawned 4-rank gloo job behind tests/hf: import every case at TP=1, TP=2, PP=2 and TP=2 x PP=2, run
a forward.

Returns (rank 0) logits per (case, tp, pp) cut to the true vocabulary, the bytes read per HF tensor by rank
0 (TP rank 0 of TP=2, stage 0 of PP=2), and each case's full TP=1 megatron state dict (for the export round trip).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hf_models import BATCH, DIVISIBLE_BY, SEQ, VOCAB

LAYOUTS = ((1, 1), (2, 1), (1, 2), (2, 2))


def _forward(layout, hf_dir: str, tokens: torch.Tensor):
    from nemo_mft.hf import describe, gpt_options, layer_spec, load_hf_into, read_config, transformer_config
    from nemo_mft.megatron import build_model

    model = describe(read_config(hf_dir), seq_length=SEQ)
    opts = gpt_options(model, tp_size=layout.tp_size, seq_length=SEQ, make_vocab_size_divisible_by=DIVISIBLE_BY)
    config = transformer_config(model, tp_size=layout.tp_size, pp_size=layout.pp_size)
    gpt = build_model(config, layer_spec(model), opts, groups=layout.groups, with_teacher=False)[0].student.eval()
    assert gpt.vocab_size == opts.padded_vocab_size
    bytes_read = load_hf_into(gpt, hf_dir, model, layout.groups)
    positions = torch.arange(SEQ).expand_as(tokens)
    pp_ranks = dist.get_process_group_ranks(layout.groups.pp)
    local_vocab = opts.padded_vocab_size // layout.tp_size
    with torch.no_grad():
        if not layout.is_first_stage:
            hidden = torch.empty(SEQ, BATCH, model.hidden_size)
            dist.recv(hidden, src=pp_ranks[layout.pp_rank - 1])
            gpt.set_input_tensor(hidden)
        out = gpt(tokens, positions, attention_mask=None)
        if not layout.is_last_stage:
            dist.send(out.contiguous(), dst=pp_ranks[layout.pp_rank + 1])
            logits = torch.empty(BATCH, SEQ, local_vocab)
            dist.recv(logits, src=pp_ranks[-1])
        else:
            logits = out
            if layout.pp_size > 1:
                dist.send(logits.contiguous(), dst=pp_ranks[0])
        parts = [torch.empty_like(logits) for _ in range(layout.tp_size)]
        dist.all_gather(parts, logits.contiguous(), group=layout.groups.tp)
    full = torch.cat(parts, dim=-1)
    assert full.shape == (BATCH, SEQ, opts.padded_vocab_size)
    state = {k: v.detach().clone() for k, v in gpt.state_dict().items() if isinstance(v, torch.Tensor)}
    return full[..., :VOCAB], bytes_read, state


def _teacher_follows_the_loaded_student(layout, hf_dir: str) -> bool:
    """The README's recipe: build with a teacher, load the student, sync; both hold the HF weights."""
    from nemo_mft.hf import describe, gpt_options, layer_spec, load_hf_into, read_config, transformer_config
    from nemo_mft.megatron import build_model, sync_teacher_from_student, unwrap

    model = describe(read_config(hf_dir), seq_length=SEQ)
    opts = gpt_options(model, tp_size=layout.tp_size, seq_length=SEQ, make_vocab_size_divisible_by=DIVISIBLE_BY)
    chunks = build_model(transformer_config(model, tp_size=layout.tp_size, pp_size=layout.pp_size),
                         layer_spec(model), opts, groups=layout.groups, with_teacher=True)
    mft = unwrap(chunks[0])
    load_hf_into(mft.student, hf_dir, model, layout.groups)
    sync_teacher_from_student(chunks)
    student, teacher = mft.student.state_dict(), mft.teacher.state_dict()
    return all(torch.equal(student[k], teacher[k]) for k in student if isinstance(student[k], torch.Tensor))


def run_all(rank: int, world_size: int, cases: dict, tokens: torch.Tensor) -> dict:
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, megatron_on_cpu

    logits, bytes_read, states, teacher_synced = {}, {}, {}, {}
    with megatron_on_cpu():
        for tp, pp in LAYOUTS:
            layout = initialize_parallel(tp, pp, seed=3)
            for name, hf_dir in cases.items():
                out, read, state = _forward(layout, hf_dir, tokens)
                logits[(name, tp, pp)] = out
                if tp > 1 or pp > 1:
                    bytes_read[(name, tp, pp)] = read
                if tp == 1 and pp == 1:
                    states[name] = state
            teacher_synced[(tp, pp)] = _teacher_follows_the_loaded_student(layout, cases["qwen3"])
            destroy_parallel()
    return {"logits": logits, "bytes_read": bytes_read, "states": states, "teacher_synced": teacher_synced}
