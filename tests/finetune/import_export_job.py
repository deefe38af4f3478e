"""The spawned one-process jobs behind tests/finetune/test_import_export.py: ``nemo-mft import`` and ``nemo-mft
export`` through the CLI entry (`nemo_mft.finetune.cli.main`), one after the other in one process (each command
creates and tears down megatron's groups), and a bf16 import loaded into an fp32 model.

Every run happens under ``root``: ``root/<case>/ckpt`` (the import), ``root/<case>/hf`` (its export).
"""

from __future__ import annotations

import time

import torch


def cli(*argv: str) -> None:
    """``nemo-mft ARGV`` in this process; fails unless it exits with status 0."""
    from nemo_mft.finetune import cli as entry

    try:
        entry.main(list(argv))
    except SystemExit as stop:
        if stop.code != 0:
            raise AssertionError(f"nemo-mft {' '.join(argv)} exited with {stop.code}") from None


def round_trip(name: str, source: str, root: str, *, import_args=(), export_args=()) -> float:
    """import ``source`` then export it; the seconds both took."""
    start = time.perf_counter()
    cli("import", source, f"{root}/{name}/ckpt", *import_args)
    cli("export", "--checkpoint", f"{root}/{name}/ckpt", "--out", f"{root}/{name}/hf", *export_args)
    return time.perf_counter() - start


def load_into_fp32(checkpoint: str, vocab_divisible_by: int) -> dict:
    """HF tensors of an fp32 TP=1 model whose vocabulary padding differs from the checkpoint's, loaded as a
    run loads ``checkpoint.pretrained_checkpoint`` (`checkpointing.load_pretrained_weights`)."""
    from nemo_mft.finetune.conversion import CONVERSION_SEQ_LENGTH
    from nemo_mft.hf import describe, gpt_options, layer_spec, megatron_to_hf, read_config, transformer_config
    from nemo_mft.megatron import build_model, destroy_parallel, initialize_parallel, megatron_on_cpu, unwrap
    from nemo_mft.training.checkpointing import base_model_dir, load_pretrained_weights, resolve_checkpoint

    model = describe(read_config(base_model_dir(resolve_checkpoint(checkpoint))), seq_length=CONVERSION_SEQ_LENGTH)
    with megatron_on_cpu():
        layout = initialize_parallel(1, 1, seed=0)
        opts = gpt_options(model, tp_size=1, seq_length=12, make_vocab_size_divisible_by=vocab_divisible_by)
        chunks = build_model(transformer_config(model, params_dtype=torch.float32), layer_spec(model), opts,
                             groups=layout.groups, with_teacher=False)
        load_pretrained_weights(checkpoint, chunks, vocab_size=model.vocab_size)
        state = {k: v.clone() for k, v in unwrap(chunks[0]).student.state_dict().items()
                 if not k.endswith("_extra_state")}
        destroy_parallel()
    assert all(t.dtype == torch.float32 for t in state.values())
    return {"padded_rows": state["embedding.word_embeddings.weight"].shape[0], "tensors": megatron_to_hf(state, model)}


def run_tiny(rank: int, world_size: int, hf_dirs: dict, root: str) -> dict:
    """Every family (default dtype, exported in 20 KB shards), then the dtype options and a bf16 import loaded
    into fp32."""
    seconds = {name: round_trip(name, source, root, export_args=("--max-shard-size", "20KB"))
               for name, source in hf_dirs.items()}
    # An fp32 model imported in bf16 and exported with the default dtype (the source config's: float32).
    seconds["llama_as_bf16"] = round_trip("llama_as_bf16", hf_dirs["llama"], root, import_args=("--dtype", "bf16"))
    # An fp32 import exported in bf16 (long name), from the iteration directory itself.
    cli("export", "--checkpoint", f"{root}/llama/ckpt/iter_0000000", "--out", f"{root}/llama/hf_bf16",
        "--dtype", "bfloat16")
    loaded = load_into_fp32(f"{root}/llama_bf16/ckpt", vocab_divisible_by=16)
    return {"seconds": seconds, "bf16_into_fp32": loaded}


def run_smollm2(rank: int, world_size: int, source: str, root: str) -> dict:
    """SmolLM2-135M-Instruct (fp32, tied embeddings) imported and exported in shards of at most 200 MB."""
    return {"seconds": round_trip("smollm2", source, root, export_args=("--max-shard-size", "200MB"))}
