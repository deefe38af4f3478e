"""Data layer: tokenizers, jsonl SFT datasets (chat rows through the model's chat template), perplexity
windows, and a resumable DP sampler.

Typical use by an entry point::

    tok = build_tokenizer(cfg.tokenizer.type, cfg.tokenizer.path)
    train = build_sft_dataset(f"{root}/training.jsonl", tok, S, max_samples=500, seed=seed)
    sampler = MicroBatchSampler(len(train), mbs, dp_rank, dp_size, seed)
    it = train_micro_batches(train, sampler, consumed_samples)   # next(it) -> {tokens, labels, loss_mask, position_ids}
    general = build_text_eval_dataset(path, tok, S, max_windows=64)
    train.accounting[0].summary()   # rows read / kept / truncated / dropped / without loss, first lines
    for batch in eval_micro_batches(general, mbs, dp_rank, dp_size): ...
"""

from nemo_mft.data.accounting import FileAccounting
from nemo_mft.data.batching import collate, eval_micro_batches, train_micro_batches
from nemo_mft.data.chat import ChatLayout, chat_layout
from nemo_mft.data.jsonl import Row, read_jsonl_rows
from nemo_mft.data.sampler import MicroBatchSampler, num_microbatches
from nemo_mft.data.samples import (
    OVERFLOW_POLICIES,
    TokenizedDataset,
    build_sft_dataset,
    concat_datasets,
    pack_sample,
    pack_tokens,
    scored_answer_tokens,
)
from nemo_mft.data.shuffle import select_subset, subset_order
from nemo_mft.data.tokenizers import (
    ByteTokenizer,
    HuggingFaceTokenizer,
    Tokenizer,
    build_tokenizer,
    train_bpe_tokenizer,
)
from nemo_mft.data.windows import build_text_eval_dataset

__all__ = [
    "ByteTokenizer",
    "ChatLayout",
    "FileAccounting",
    "HuggingFaceTokenizer",
    "MicroBatchSampler",
    "OVERFLOW_POLICIES",
    "Row",
    "TokenizedDataset",
    "Tokenizer",
    "build_sft_dataset",
    "chat_layout",
    "build_text_eval_dataset",
    "build_tokenizer",
    "collate",
    "concat_datasets",
    "eval_micro_batches",
    "num_microbatches",
    "pack_sample",
    "pack_tokens",
    "read_jsonl_rows",
    "scored_answer_tokens",
    "select_subset",
    "subset_order",
    "train_bpe_tokenizer",
    "train_micro_batches",
]
