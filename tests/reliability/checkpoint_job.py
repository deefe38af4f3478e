"""The spawned 2-rank gloo job (TP=2) behind tests/reliability/test_checkpoints.py.

One world serves every case of the file (process start-up costs seconds). Faults are made for real on
disk: copies of a saved checkpoint get a shard cut short, a flipped byte, a tampered or missing manifest;
models of other architectures are built through the recipe's builders; an interrupted save is a leftover
``iter_*.tmp`` directory and a save whose last step fails. The sections return plain data (error
messages, flags, paths) that the test file checks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch
import torch.distributed as dist

SEQ, VOCAB = 12, 100


def _section(**changes):
    """The tiny model at TP=2, 128 vocabulary rows (100 padded to a multiple of 64 x 2); ``changes`` override."""
    from nemo_mft.config.schema import ModelSection

    fields = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                  make_vocab_size_divisible_by=64, tensor_model_parallel_size=2)
    return ModelSection(**{**fields, **changes}).with_scratch_defaults()


def _trainer(layout, vocab: int = VOCAB, **changes):
    """DDP chunks, Adam and the LR schedule of the tiny model (of another architecture with ``changes``)."""
    from nemo_mft.config import builders
    from nemo_mft.config.schema import DatasetSection, FinetuneConfig, OptimizerSection
    from nemo_mft.megatron import build_model, build_optimizer, wrap_with_ddp
    from nemo_mft.training.scheduler import build_scheduler

    section = _section(**changes)
    config = FinetuneConfig(dataset=DatasetSection(dataset_root="/unused"), optimizer=OptimizerSection(lr=1e-2))
    chunks = build_model(builders.transformer_config(section), builders.layer_spec(section),
                         builders.gpt_options(section, vocab_size=vocab, seq_length=SEQ), groups=layout.groups,
                         with_teacher=False)
    chunks = wrap_with_ddp(chunks, layout.groups)
    optimizer = build_optimizer(chunks, builders.optimizer_config(config.optimizer, section), layout.groups)
    return chunks, optimizer, build_scheduler(optimizer, config)


def _train_one_step(layout, chunks, optimizer, scheduler) -> None:
    """One plain fine-tuning step, so that Adam has state (exp_avg, exp_avg_sq) to checkpoint."""
    from nemo_mft.megatron import make_forward_step, train_step
    from nemo_mft.methods import Objective

    g = torch.Generator().manual_seed(7 + layout.dp_rank)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1), "loss_mask": torch.ones(2, SEQ),
             "position_ids": torch.arange(SEQ).expand(2, SEQ).contiguous()}
    step = make_forward_step(Objective(method="ft"), vocab_size=VOCAB, tp_group=layout.groups.tp)
    train_step(step, iter([batch]), chunks, optimizer, groups=layout.groups, num_microbatches=1, seq_length=SEQ,
               micro_batch_size=2)
    scheduler.step(1)


def _weights(chunks) -> dict:
    from nemo_mft.megatron import unwrap

    return {k: v.detach().clone() for k, v in unwrap(chunks[0]).state_dict().items() if isinstance(v, torch.Tensor)}


def _full_embedding(chunks, layout) -> torch.Tensor:
    """The word embedding gathered over the TP group (all its rows, padding included)."""
    from nemo_mft.megatron import unwrap

    local = unwrap(chunks[0]).student.embedding.word_embeddings.weight.detach().contiguous()
    parts = [torch.empty_like(local) for _ in range(layout.tp_size)]
    dist.all_gather(parts, local, group=layout.groups.tp)
    return torch.cat(parts, dim=0)


def _unchanged(chunks, before: dict) -> bool:
    """Whether the weights of ``chunks`` equal ``before`` on every rank."""
    after = _weights(chunks)
    same = after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, same)
    return all(everyone)


def _error(fn, *args, **kwargs):
    """``"Type: message"`` of the error ``fn`` raises, checked to be the same on every rank; None if none."""
    try:
        fn(*args, **kwargs)
        outcome = None
    except (ValueError, FileNotFoundError) as err:
        outcome = f"{type(err).__name__}: {err}"
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, outcome)
    if len(set(everyone)) != 1:
        raise AssertionError(f"the ranks disagree: {everyone}")
    return outcome


class _Warnings(logging.Handler):
    """Collects the warnings of nemo_mft.training.checkpointing."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _on_rank0(action, *args) -> None:
    if dist.get_rank() == 0:
        action(*args)
    dist.barrier()


# ------------------------------------------------------------------------------ damage on disk

def _truncate(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def _flip(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _tamper_manifest(ckpt: str) -> None:
    """Give common.pt a wrong checksum in the manifest (the file itself stays intact)."""
    from nemo_mft.training.checkpointing import MANIFEST_FILE

    path = os.path.join(ckpt, MANIFEST_FILE)
    with open(path) as handle:
        manifest = json.load(handle)
    manifest["files"]["common.pt"]["sha256"] = "0" * 64
    with open(path, "w") as handle:
        json.dump(manifest, handle)


def _damaged_copies(ckpt: str, root: str) -> dict[str, str]:
    """Rank 0: copies of checkpoint ``ckpt`` under ``root``, each with one fault; name -> directory."""
    from nemo_mft.training.checkpointing import MANIFEST_FILE

    faults = {
        "cut_shard": lambda d: _truncate(os.path.join(d, "__1_0.distcp")),
        "flipped_shard": lambda d: _flip(os.path.join(d, "__0_0.distcp")),
        "flipped_common": lambda d: _flip(os.path.join(d, "common.pt")),
        "cut_common": lambda d: _truncate(os.path.join(d, "common.pt")),
        "flipped_metadata": lambda d: _flip(os.path.join(d, "metadata.json")),
        "tampered_manifest": _tamper_manifest,
        "no_manifest": lambda d: os.remove(os.path.join(d, MANIFEST_FILE)),
        "garbage_manifest": lambda d: _truncate(os.path.join(d, MANIFEST_FILE)),
    }
    copies = {}
    for name, damage in faults.items():
        copies[name] = os.path.join(root, name)
        if dist.get_rank() == 0:
            shutil.copytree(ckpt, copies[name])
            damage(copies[name])
    dist.barrier()
    return copies


# ------------------------------------------------------------------------------ sections

def damage_section(layout, ckpt: str, root: str, warnings: _Warnings) -> dict:
    """Loads of damaged copies of ``ckpt``, with and without checksum verification."""
    from nemo_mft.training import checkpointing as ck

    copies = _damaged_copies(ckpt, root)
    chunks, optimizer, scheduler = _trainer(layout)
    before = _weights(chunks)

    def resume(name: str, verify: bool = True):
        return _error(ck.load_checkpoint, copies[name], chunks, optimizer, scheduler, layout, verify_checksums=verify)

    def weights(name: str, verify: bool = True):
        return _error(ck.load_pretrained_weights, copies[name], chunks, verify_checksums=verify)

    out = {"copies": copies}
    out["verified"] = {name: resume(name) for name in ("cut_shard", "flipped_shard", "flipped_common",
                                                      "flipped_metadata", "garbage_manifest")}
    out["verified_weights"] = {"cut_shard": weights("cut_shard")}
    out["nothing_loaded"] = _unchanged(chunks, before)
    out["unverified"] = {"cut_shard": resume("cut_shard", verify=False),
                         "cut_shard_weights": weights("cut_shard", verify=False),
                         "cut_common": resume("cut_common", verify=False)}
    warnings.messages.clear()
    out["tampered_verified"] = resume("tampered_manifest")
    out["tampered_unverified"] = resume("tampered_manifest", verify=False)  # the files are intact: loads
    out["no_manifest"] = resume("no_manifest")
    out["no_manifest_warnings"] = list(warnings.messages)
    out["loaded_after_skip"] = not _unchanged(chunks, before)
    return out


def architecture_section(layout, ckpt: str, saved_embedding: torch.Tensor, warnings: _Warnings) -> dict:
    """Loads of ``ckpt`` (2 layers, hidden 32, 128 vocabulary rows, biases) into other architectures.

    The loads pass the tokenizer's vocabulary size as the loop does, except where said otherwise.
    """
    from nemo_mft.training import checkpointing as ck

    out = {}
    refused = {"three_layers": ({"num_layers": 3}, VOCAB),
               "hidden_48": ({"hidden_size": 48, "ffn_hidden_size": 96}, VOCAB),
               "no_bias": ({"add_bias_linear": False}, VOCAB),
               "vocab_112_unknown": ({"make_vocab_size_divisible_by": 8}, None),  # the vocabulary size unknown
               "vocab_130": ({}, 130)}  # 130 tokens: 256 rows, more tokens than the checkpoint's 128 rows
    for name, (changes, vocab_size) in refused.items():
        chunks, optimizer, scheduler = _trainer(layout, vocab=vocab_size or VOCAB, **changes)
        before = _weights(chunks)
        out[name] = {"resume": _error(ck.load_checkpoint, ckpt, chunks, optimizer, scheduler, layout,
                                      vocab_size=vocab_size),
                     "weights": _error(ck.load_pretrained_weights, ckpt, chunks, vocab_size=vocab_size),
                     "nothing_loaded": _unchanged(chunks, before)}

    # Another TP size pads the vocabulary to another multiple: 112 or 192 rows hold the 100 tokens too.
    for name, multiple in (("vocab_112", 8), ("vocab_192", 96)):
        chunks, optimizer, scheduler = _trainer(layout, make_vocab_size_divisible_by=multiple)
        warnings.messages.clear()
        result = {"resume": _error(ck.load_checkpoint, ckpt, chunks, optimizer, scheduler, layout, vocab_size=VOCAB)}
        embedding = _full_embedding(chunks, layout)
        result["rows"] = embedding.shape[0]
        result["tokens_loaded"] = torch.equal(embedding[:VOCAB], saved_embedding[:VOCAB])
        kept = min(embedding.shape[0], 128)
        result["stored_padding_loaded"] = torch.equal(embedding[VOCAB:kept], saved_embedding[VOCAB:kept])
        result["new_rows_zero"] = bool((embedding[128:] == 0).all())
        result["warnings"] = list(warnings.messages)
        result["weights"] = _error(ck.load_pretrained_weights, ckpt, chunks, vocab_size=VOCAB)
        out[name] = result
    return out


def interrupted_section(layout, root: str, chunks, optimizer, scheduler) -> dict:
    """Leftovers of interrupted saves never become latest and are removed by the next save."""
    from nemo_mft.training import checkpointing as ck

    common = {"consumed_samples": 4, "base": {"spec_ppl": 2.0, "gen_ppl": None}, "method": "mft"}
    staged = ck.iteration_dir(root, 2) + ck.STAGING_SUFFIX

    def leave_leftovers():
        shutil.copytree(ck.iteration_dir(root, 1), staged)  # looks complete: metadata.json and manifest
        with open(os.path.join(root, ck.TRACKER_FILE + ".tmp"), "w") as handle:
            handle.write("2\n")

    _on_rank0(leave_leftovers)
    out = {"before": {"resolved": os.path.basename(ck.resolve_checkpoint(root)),
                      "saved_iterations": ck.saved_iterations(root), "tracker": ck.read_tracker(root),
                      "listing": sorted(os.listdir(root))}}
    out["staging_refused"] = _error(ck.resolve_checkpoint, staged)

    # A save that fails after every rank wrote its shards (here: the manifest cannot be written).
    real_write_manifest = ck.write_manifest

    def disk_full(path):
        raise OSError(28, "No space left on device", path)

    ck.write_manifest = disk_full
    try:
        failed = None
        try:
            ck.save_checkpoint(root, 3, chunks, optimizer, scheduler, layout, common=common, keep_last=5)
        except (OSError, RuntimeError) as err:
            failed = f"{type(err).__name__}: {err}"
    finally:
        ck.write_manifest = real_write_manifest
    dist.barrier()
    out["failed_save"] = {"error": failed, "resolved": os.path.basename(ck.resolve_checkpoint(root)),
                          "saved_iterations": ck.saved_iterations(root), "listing": sorted(os.listdir(root))}

    saved = ck.save_checkpoint(root, 2, chunks, optimizer, scheduler, layout, common=common, keep_last=5)
    out["after"] = {"saved": os.path.basename(saved), "resolved": os.path.basename(ck.resolve_checkpoint(root)),
                    "saved_iterations": ck.saved_iterations(root), "tracker": ck.read_tracker(root),
                    "listing": sorted(os.listdir(root)),
                    "has_manifest": os.path.isfile(os.path.join(saved, ck.MANIFEST_FILE))}
    return out


def run_all(rank: int, world_size: int, root: str) -> dict:
    from nemo_mft.megatron import destroy_parallel, initialize_parallel, megatron_on_cpu
    from nemo_mft.training import checkpointing as ck

    warnings = _Warnings()
    logging.getLogger(ck.__name__).addHandler(warnings)
    with megatron_on_cpu():
        layout = initialize_parallel(2, 1, seed=5)
        run = os.path.join(root, "run")
        chunks, optimizer, scheduler = _trainer(layout)
        _train_one_step(layout, chunks, optimizer, scheduler)
        common = {"consumed_samples": 2, "base": {"spec_ppl": 2.0, "gen_ppl": None}, "method": "mft"}
        ckpt = ck.save_checkpoint(run, 1, chunks, optimizer, scheduler, layout, common=common, keep_last=5)
        saved_embedding = _full_embedding(chunks, layout)
        out = {"ckpt": ckpt}
        warnings.messages.clear()
        fresh = _trainer(layout)
        out["clean_load"] = _error(ck.load_checkpoint, ckpt, *fresh, layout)
        out["clean_load_warnings"] = list(warnings.messages)
        out["damage"] = damage_section(layout, ckpt, os.path.join(root, "damaged"), warnings)
        out["architecture"] = architecture_section(layout, ckpt, saved_embedding, warnings)
        out["interrupted"] = interrupted_section(layout, run, chunks, optimizer, scheduler)
        destroy_parallel()
    return out
