#!/usr/bin/env python3
"""Greedy chat generation with transformers from a Hugging Face model directory (the example's export).

    python generate.py MODEL_DIR [--adapter PEFT_DIR] [--validation VALIDATION_JSONL] [--general QUESTION]
                       [--max-new-tokens N]

Loads MODEL_DIR with AutoModelForCausalLM and AutoTokenizer, offline (HF_HUB_OFFLINE=1, local_files_only), in
float32 on the CPU (with --adapter, peft's PeftModel puts the LoRA adapter on it); renders each question with the directory's own chat template (add_generation_prompt) and
prints the greedily generated continuation:

* the domain question: the first row of VALIDATION_JSONL (its system prompt and user turn; a (fact, wording)
  pair that training never showed), printed beside the catalogue's answer;
* one general question (--general), with no system prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

GENERAL_QUESTION = "Why do people keep a vegetable garden? Answer in two sentences."


def first_chat(path: str) -> tuple[list[dict], str]:
    """(the messages before the assistant's answer, the answer) of the first row of a chat jsonl."""
    with open(path, encoding="utf-8") as f:
        messages = json.loads(f.readline())["messages"]
    k = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:k], messages[k]["content"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--validation", help="chat jsonl whose first row gives the domain question")
    parser.add_argument("--general", default=GENERAL_QUESTION, help="the general question")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--label", default=None, help="name printed in the header (default: MODEL_DIR)")
    parser.add_argument("--adapter", default=None,
                        help="an HF-PEFT LoRA adapter directory loaded onto MODEL_DIR with peft.PeftModel")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, local_files_only=True, dtype=torch.float32).eval()
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, local_files_only=True).eval()
    prompts = []
    if args.validation:
        messages, reference = first_chat(args.validation)
        prompts.append(("domain (held out)", messages, reference))
    prompts.append(("general", [{"role": "user", "content": args.general}], None))

    print(f"== generation from {args.label or args.model_dir} ({type(model).__name__}, greedy, "
          f"{args.max_new_tokens} new tokens)")
    for kind, messages, reference in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        question = messages[-1]["content"]
        print(f"[{kind}] Q: {question}")
        if reference is not None:
            print(f"[{kind}] catalogue: {reference}")
        print(f"[{kind}] A: {text}")
    print(f"== generated in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
