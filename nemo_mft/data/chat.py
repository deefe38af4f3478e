"""Chat rows as token ids with a loss flag per token, from the model's own chat template.

A conversation ``messages = [m_0, ..., m_{n-1}]`` (``(role, content)`` pairs) becomes the ids of
``render(messages)`` (the whole row, rendered once more at the end). The tokens with loss are exactly
those each assistant turn adds: for an assistant message ``k``, the ids of ``render(messages[:k+1])``
beyond ``render(messages[:k], add_generation_prompt=True)``. The generation prompt itself (e.g.
``<|im_start|>assistant\\n``) and every other turn get no loss; the end-of-turn marker the template
writes after the assistant's content (e.g. ``<|im_end|>\\n``) does, so the model learns to stop.

The renderings are checked in order: each must be a token-wise prefix of the next::

    render(m[:k1], gen) <= render(m[:k1+1]) <= render(m[:k2], gen) <= render(m[:k2+1]) <= ... <= render(m)

for the assistant positions ``k1 < k2 < ...``. A template that breaks this (one that injects a default
system prompt only when the conversation is not empty, drops earlier reasoning, or merges tokens across a
turn boundary) raises a ``ValueError`` saying which rendering is not a prefix of which, rather than
guessing a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nemo_mft.data.tokenizers import Tokenizer

__all__ = ["ChatLayout", "chat_layout"]

Messages = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ChatLayout:
    """``ids`` [L]: the rendered conversation; ``scored`` [L]: ``True`` where the token was added by an
    assistant turn (the token gets loss where it is a label)."""

    ids: tuple[int, ...]
    scored: tuple[bool, ...]


def _stages(messages: Messages) -> list[tuple[int, bool]]:
    """The renderings to make, in order, as ``(number of leading messages, add_generation_prompt)``.

    Two per assistant message ``k`` (``(k, True)``, ``(k + 1, False)``), then the whole conversation when
    it does not end with an assistant message.
    """
    stages = [stage for k, (role, _) in enumerate(messages) if role == "assistant"
              for stage in ((k, True), (k + 1, False))]
    if not stages or stages[-1][0] != len(messages):
        stages.append((len(messages), False))
    return stages


def _describe(count: int, generation_prompt: bool) -> str:
    """``messages[:3] + generation prompt``, for errors."""
    return f"messages[:{count}]" + (" + generation prompt" if generation_prompt else "")


def _first_difference(shorter: Sequence[int], longer: Sequence[int]) -> int:
    """The first index at which ``shorter`` is not a prefix of ``longer`` (``len(longer)`` when it is longer)."""
    for index, (a, b) in enumerate(zip(shorter, longer)):
        if a != b:
            return index
    return min(len(shorter), len(longer))


def _check_prefix(before: list[int], after: list[int], stage_before: tuple[int, bool],
                  stage_after: tuple[int, bool]) -> None:
    """A ``ValueError`` unless ``before`` is a token-wise prefix of ``after``."""
    if len(before) <= len(after) and after[: len(before)] == before:
        return
    at = _first_difference(before, after)
    raise ValueError(
        f"the chat template does not extend the conversation token by token: the rendering of "
        f"{_describe(*stage_before)} ({len(before)} tokens) is not a prefix of the rendering of "
        f"{_describe(*stage_after)} ({len(after)} tokens; they differ at token {at}), so the assistant "
        f"tokens cannot be told apart")


def chat_layout(messages: Messages, tokenizer: Tokenizer) -> ChatLayout:
    """Render ``messages`` with ``tokenizer.render_chat`` and flag the assistant tokens (module docstring).

    Raises ``ValueError`` when the tokenizer has no chat template, the template fails, or a rendering is
    not a prefix of the next one.
    """
    stages = _stages(messages)
    scored: list[bool] = []
    previous: list[int] = []
    previous_stage = (0, False)
    for stage in stages:
        ids = tokenizer.render_chat(messages[: stage[0]], stage[1])
        _check_prefix(previous, ids, previous_stage, stage)
        # A rendering without the generation prompt, right after one with it, closes an assistant turn.
        added_by_assistant = previous_stage[1] and not stage[1]
        scored.extend([added_by_assistant] * (len(ids) - len(previous)))
        previous, previous_stage = ids, stage
    return ChatLayout(ids=tuple(previous), scored=tuple(scored))
