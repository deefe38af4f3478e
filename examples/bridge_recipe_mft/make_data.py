"""The smoke run's inputs: a small question/answer data set (JSONL of {"input", "output"}: four words, answered by
the same words reversed) and a byte-level BPE tokenizer trained on it, saved as a Hugging Face tokenizer directory.

    python make_data.py OUT      # OUT/data/{training,validation}.jsonl, OUT/tokenizer/
"""

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    data = out / "data"
    data.mkdir(parents=True)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows = []
    for i in range(48):
        question = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(4))
        rows.append({"input": f"Q{i}: {question}? ", "output": " ".join(reversed(question.split()))})
    (data / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
    (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[40:]))

    specials = ["<s>", "</s>", "<pad>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r["input"] + r["output"] for r in rows], vocab_size=320, min_frequency=1,
                            special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(out / "tokenizer")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_data.py OUT")
    main(Path(sys.argv[1]))
