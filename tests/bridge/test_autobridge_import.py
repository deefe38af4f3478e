"""AutoBridge's Hugging Face -> Megatron import (``AutoBridge.from_hf_pretrained(...).to_megatron_provider()``)
and our converter (``nemo_mft.hf.load_hf_into``, the path of ``nemo-mft import`` and of a finetune from an HF
directory) put the same weights into megatron-core's local-spec GPT, rank by rank, at TP=2 and TP=1; and
AutoBridge's model reproduces transformers' logits (an independent reference for both).

The checkpoint is a tiny random Llama built with transformers' own LlamaConfig / LlamaForCausalLM (GQA: 4 heads in
2 groups, every tensor perturbed away from its initial value, so a swapped or transposed mapping cannot pass).
Vocabulary 128: AutoBridge's provider keeps it unpadded, and our padding (to a multiple of 64 * TP) adds no rows
at TP=1 or TP=2, so the embedding and output tensors compare whole. One spawned 2-rank job runs both layouts.
"""

import torch

import bridge_harness as bh

VOCAB, SEQ, BATCH = 128, 12, 2
DIVISIBLE_BY = 64  # our padding: to a multiple of 64 * TP, i.e. none for 128 rows at TP=1 and TP=2
LAYOUTS = (2, 1)


def _build_hf_llama(out_dir: str) -> str:
    import transformers

    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                      max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(out_dir)
    return out_dir


def _autobridge_model(hf_dir: str, tp: int):
    from megatron.bridge import AutoBridge
    from megatron.bridge.models.gpt_provider import local_layer_spec

    from nemo_mft.megatron.model import transformer_config_settings

    provider = AutoBridge.from_hf_pretrained(hf_dir, dtype=torch.float32).to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = tp
    provider.transformer_layer_spec = local_layer_spec
    provider.params_dtype, provider.pipeline_dtype, provider.bf16, provider.fp16 = torch.float32, torch.float32, False, False
    provider.seq_length = SEQ
    for name, value in transformer_config_settings().items():
        setattr(provider, name, value)
    provider.cross_entropy_loss_fusion = False
    provider.finalize()
    return provider.provide_distributed_model(wrap_with_ddp=False, mixed_precision_wrapper=None,
                                              use_cpu_initialization=True)[0]


def _our_model(hf_dir: str, layout):
    from nemo_mft.hf import describe, gpt_options, layer_spec, load_hf_into, read_config, transformer_config
    from nemo_mft.megatron import build_model

    model = describe(read_config(hf_dir), seq_length=SEQ)
    opts = gpt_options(model, tp_size=layout.tp_size, seq_length=SEQ, make_vocab_size_divisible_by=DIVISIBLE_BY)
    gpt = build_model(transformer_config(model, tp_size=layout.tp_size), layer_spec(model), opts,
                      groups=layout.groups, with_teacher=False)[0].student
    load_hf_into(gpt, hf_dir, model, layout.groups)
    return gpt


def _import_both(rank, world_size, hf_dir, tokens):
    from megatron.core.utils import unwrap_model

    from nemo_mft.megatron import destroy_parallel, initialize_parallel

    out = {}
    for tp in LAYOUTS:
        layout = initialize_parallel(tp, 1, seed=7)
        try:
            bridge_gpt = unwrap_model(_autobridge_model(hf_dir, tp)).eval()
            ours = _our_model(hf_dir, layout).eval()
            bridge_params = {k: v.detach().clone() for k, v in bridge_gpt.named_parameters()}
            our_params = {k: v.detach().clone() for k, v in ours.named_parameters()}
            with torch.no_grad():
                positions = torch.arange(SEQ).expand_as(tokens)
                logits = bridge_gpt(tokens, positions, attention_mask=None)
                parts = [torch.empty_like(logits) for _ in range(tp)]  # [batch, seq, vocab / tp] each
                torch.distributed.all_gather(parts, logits.contiguous(), group=layout.groups.tp)
            out[tp] = {"bridge": bridge_params, "ours": our_params, "logits": torch.cat(parts, dim=-1)}
        finally:
            destroy_parallel()
    return out


def test_autobridge_and_our_converter_import_the_same_weights(tmp_path):
    import transformers

    hf_dir = _build_hf_llama(str(tmp_path / "hf_llama"))
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    per_rank = bh.run_ranks(2, _import_both, hf_dir, tokens)

    reference = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        hf_logits = reference(tokens).logits
    hf_params = dict(reference.named_parameters())
    for tp in LAYOUTS:
        for rank, result in enumerate(per_rank):
            bridge, ours = result[tp]["bridge"], result[tp]["ours"]
            assert set(bridge) == set(ours), (tp, rank, set(bridge) ^ set(ours))
            assert len(ours) == 3 + 2 * 6  # embedding, output layer, final norm; 2 layers x (2 norms, 4 linears)
            for name in ours:
                assert bridge[name].shape == ours[name].shape, (tp, rank, name)
                assert torch.equal(bridge[name], ours[name]), (tp, rank, name,
                                                               (bridge[name] - ours[name]).abs().max())
            # transformers' logits: an independent check of what both converters produced.
            torch.testing.assert_close(result[tp]["logits"], hf_logits, rtol=1e-5, atol=1e-5)
    # The import really carried the perturbed HF weights (not, say, a default initialisation).
    embed = per_rank[0][1]["ours"]["embedding.word_embeddings.weight"]
    assert torch.equal(embed, hf_params["model.embed_tokens.weight"].detach())
