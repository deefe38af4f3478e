"""The small question/answer data set that the command-line tests train `conf/mft_tiny.yaml` on."""

from __future__ import annotations

import json
from pathlib import Path


def write_qa_data(root: Path) -> Path:
    """``root/training.jsonl`` (24 rows) and ``root/validation.jsonl`` (4 rows) of ``{"input", "output"}``:
    four words of a question, answered by the same words reversed. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows = []
    for i in range(28):
        question = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(4))
        rows.append({"input": f"Q{i}: {question}? ", "output": " ".join(reversed(question.split()))})
    (root / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    return root
