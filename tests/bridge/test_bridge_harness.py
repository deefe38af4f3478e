"""Bridge's own finetune() with Bridge's own forward step (megatron.bridge.training.gpt_step.forward_step) on the
tiny GPT of the harness, from a pretrained Bridge checkpoint, at two layouts on the same two gloo ranks:
TP=2 (DP=1) and TP=1 (DP=2). Both must see the same data and give the same per-iteration losses (fp32, rel 1e-5);
the first iteration's loss must equal transformers' (LlamaForCausalLM on the pretrained weights, converted with
nemo_mft.hf.megatron_to_hf) masked next-token loss on the harness's micro-batches (an independent reference for
the model, the data order and the loss); the finetuned weights must differ from the pretrained ones; and the TP=2
run resumed from its Bridge checkpoint of iteration 2 must give exactly the uninterrupted run's last loss. A run
with Bridge's LoRA (``ConfigContainer.peft``) at TP=2 starts at the base model's loss (B = 0).

One spawned 2-rank job runs the four finetune() calls one after the other (Bridge tears its global state down
after each run; the gloo process group stays, as the harness made it): about 15-35 s on 2 cores.
"""

import math

import pytest
import torch

import bridge_harness as bh

TRAIN_ITERS = 3
MICRO_BATCH = 2
GLOBAL_BATCH = 4
RESUME_FROM = 2


def _finetune_both_layouts(rank, world_size, run_dir):
    from megatron.bridge.training.gpt_step import forward_step

    pretrained = f"{run_dir}/pretrained"
    bh.make_pretrained_checkpoint(pretrained)
    results = {}
    for tp in (2, 1):
        # The TP=2 run also saves Bridge checkpoints (iterations 2 and 3) for the resume below.
        save = dict(save=f"{run_dir}/checkpoints", save_interval=RESUME_FROM) if tp == 2 else {}
        cfg = bh.tiny_finetune_config(run_dir=f"{run_dir}/tp{tp}", tensor_parallel=tp, train_iters=TRAIN_ITERS,
                                      micro_batch_size=MICRO_BATCH, global_batch_size=GLOBAL_BATCH,
                                      pretrained_checkpoint=pretrained, **save)
        recorder = bh.LossRecorder(forward_step)
        capture = bh.weight_capture()
        bh.run_finetune(cfg, recorder, callbacks=[capture])
        results[tp] = {"records": recorder.records, "tp_rank": rank % tp,
                       "bridge_lm_loss": [d["lm loss"] for d in capture.loss_dicts],
                       "weights": capture.weights[0] if tp == 1 and rank == 0 else None}
    # Resume the TP=2 run from its iteration-2 checkpoint (model, optimizer, RNG, data position) and finish it.
    cfg = bh.tiny_finetune_config(run_dir=f"{run_dir}/resumed", tensor_parallel=2, train_iters=TRAIN_ITERS,
                                  micro_batch_size=MICRO_BATCH, global_batch_size=GLOBAL_BATCH,
                                  pretrained_checkpoint=pretrained, load=f"{run_dir}/checkpoints")
    cfg.checkpoint.ckpt_step = RESUME_FROM
    recorder = bh.LossRecorder(forward_step)
    bh.run_finetune(cfg, recorder)
    results["resumed"] = recorder.records
    # Bridge's LoRA (config.peft) on the plain megatron-core linears, one iteration at TP=2.
    from megatron.bridge.peft.lora import LoRA

    cfg = bh.tiny_finetune_config(run_dir=f"{run_dir}/lora", tensor_parallel=2, train_iters=1,
                                  micro_batch_size=MICRO_BATCH, global_batch_size=GLOBAL_BATCH,
                                  pretrained_checkpoint=pretrained, peft=LoRA(dim=4, alpha=8))
    recorder, capture = bh.LossRecorder(forward_step), bh.weight_capture()
    bh.run_finetune(cfg, recorder, callbacks=[capture])
    results["lora"] = {"records": recorder.records, "names": sorted(capture.weights[0])}
    return results


def _transformers_loss(megatron_weights, *, iteration):
    """transformers' token-weighted masked next-token loss of the tiny GPT on the micro-batches of ``iteration``."""
    import transformers

    from nemo_mft.hf import describe, megatron_to_hf

    config = transformers.LlamaConfig(vocab_size=bh.MODEL_VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=bh.SEQ_LENGTH,
                                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                                      architectures=["LlamaForCausalLM"])
    model = transformers.LlamaForCausalLM(config).eval()
    hf_state = megatron_to_hf(megatron_weights, describe(config.to_dict(), seq_length=bh.SEQ_LENGTH))
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("rotary" in name for name in missing), (missing, unexpected)
    total, tokens = 0.0, 0.0
    for micro in range(GLOBAL_BATCH // MICRO_BATCH):
        batch = bh.micro_batch(iteration, micro, micro_batch_size=MICRO_BATCH, global_batch_size=GLOBAL_BATCH)
        with torch.no_grad():
            logits = model(batch["tokens"], position_ids=batch["position_ids"]).logits.double()
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                      reduction="none")
        total += float((per_token * batch["loss_mask"].flatten().double()).sum())
        tokens += float(batch["loss_mask"].sum())
    return total / tokens


def test_finetune_tp2_equals_tp1(tmp_path):
    per_rank = bh.run_ranks(2, _finetune_both_layouts, str(tmp_path))
    pretrained = bh.load_checkpoint_weights(str(tmp_path / "pretrained"))

    losses = {}
    for tp in (2, 1):
        # One rank per data-parallel replica holds the losses of that replica's micro-batches.
        records = [r for result in per_rank if result[tp]["tp_rank"] == 0 for r in result[tp]["records"]]
        assert len(records) == TRAIN_ITERS * GLOBAL_BATCH // MICRO_BATCH
        assert all(r["num_tokens"] == MICRO_BATCH * (bh.SEQ_LENGTH - 4) for r in records)
        losses[tp] = bh.per_iteration_losses(records)
        assert len(losses[tp]) == TRAIN_ITERS and all(math.isfinite(x) for x in losses[tp])
        # Bridge's own reduced "lm loss" (its log line) is the same token-weighted mean.
        for rank_result in per_rank:
            assert torch.allclose(torch.tensor(rank_result[tp]["bridge_lm_loss"]), torch.tensor(losses[tp]),
                                  rtol=1e-6, atol=0)
    assert torch.allclose(torch.tensor(losses[2]), torch.tensor(losses[1]), rtol=1e-5, atol=0), losses
    # Untrained, the tiny model predicts ~uniformly over its 128 columns: the first loss is near ln(128).
    assert abs(losses[1][0] - math.log(bh.MODEL_VOCAB)) < 0.2

    resumed = per_rank[0]["resumed"]
    assert [r["iteration"] for r in resumed] == [RESUME_FROM] * (GLOBAL_BATCH // MICRO_BATCH)
    assert bh.per_iteration_losses(resumed) == losses[2][RESUME_FROM:]  # exact: same weights, optimizer, data
    # LoRA's B starts at zero: its first loss is the base model's; adapters sit on all four linears of each layer.
    lora = per_rank[0]["lora"]
    assert bh.per_iteration_losses(lora["records"]) == pytest.approx(losses[2][:1], rel=1e-6)
    assert sum(".adapter.linear_out.weight" in name for name in lora["names"]) == 2 * 4
    assert losses[1][0] == pytest.approx(_transformers_loss(pretrained, iteration=0), rel=1e-5)

    trained = per_rank[0][1]["weights"]
    assert set(trained) == set(pretrained), set(trained) ^ set(pretrained)
    changed = [name for name, value in trained.items() if not torch.equal(value, pretrained[name])]
    assert len(changed) == len(trained), f"not updated by finetune(): {set(trained) - set(changed)}"
