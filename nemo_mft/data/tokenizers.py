"""Tokenizers: a built-in byte tokenizer and a local Hugging Face ``tokenizers`` wrapper.

Every tokenizer here has the same small interface (see :class:`Tokenizer`): ``vocab_size``,
``encode(text) -> list[int]`` (no special tokens added), ``decode(ids) -> str`` (special tokens
dropped), ``render_chat(messages, add_generation_prompt) -> list[int]`` (a conversation through the
model's chat template; only Hugging Face tokenizers with a template have one) and the ids ``eos_id``,
``pad_id``, ``bos_id`` (``bos_id`` may be ``None``).
Special tokens are added by the dataset code (:mod:`nemo_mft.data.samples`), never by ``encode``; in a
chat rendering they are whatever the template writes.

Nothing here downloads: :class:`HuggingFaceTokenizer` only reads a local ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Protocol, Sequence, runtime_checkable

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "HuggingFaceTokenizer",
    "train_bpe_tokenizer",
    "build_tokenizer",
    "TOKENIZER_TYPES",
]

TOKENIZER_TYPES = ("byte", "huggingface")

# Special-token spellings tried, in order, when a tokenizer.json comes without a tokenizer_config.json
# naming them. The first three are what train_bpe_tokenizer writes.
_DEFAULT_PAD = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")
_DEFAULT_BOS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
_DEFAULT_EOS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")


@runtime_checkable
class Tokenizer(Protocol):
    """The interface the datasets need. ``bos_id`` is ``None`` when the tokenizer has no bos token;
    ``adds_bos``: whether a text starts with the bos when the model sees it (prompt/answer rows get one)."""

    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: Optional[int]
    adds_bos: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def render_chat(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> list[int]: ...


class ByteTokenizer:
    """Byte-level tokenizer for tests and demos: ids 0..255 are the UTF-8 bytes of the text.

    Special tokens sit above the bytes: ``pad_id = 256``, ``bos_id = 257``, ``eos_id = 258``;
    ``vocab_size = 259``. ``encode`` never produces a special id (a literal ``"</s>"`` in the text is
    just four bytes); ``decode`` drops special ids and decodes the bytes with ``errors="replace"``.
    """

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259
    adds_bos = True

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> list[int]:
        """Always a ``ValueError``: the byte tokenizer has no chat template."""
        raise ValueError("tokenizer type 'byte' has no chat template; chat rows ({\"messages\": ...}) need "
                         "tokenizer.type 'huggingface' with a chat template")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


def resolve_tokenizer_file(path: str) -> str:
    """``path`` (a tokenizer.json file or a directory holding one) -> the file; clear errors otherwise."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    if os.path.isdir(path):
        candidate = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(candidate):
            raise FileNotFoundError(
                f"no tokenizer.json in directory {path} (expected a Hugging Face `tokenizers` file; "
                "sentencepiece / vocab+merges layouts are not supported)"
            )
        return candidate
    return path


def _read_chat_template(directory: str, config: dict) -> Optional[str]:
    """The chat template beside a tokenizer: ``chat_template.jinja`` if present, else tokenizer_config.json's
    ``"chat_template"`` (a string, or a list of ``{"name", "template"}`` of which ``"default"`` is used), else
    ``None``. The file wins, as in transformers."""
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            return f.read()
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value else None


def _special_from_config(config: dict, key: str) -> Optional[str]:
    """A special token's text from a transformers ``tokenizer_config.json`` (str or {"content": str})."""
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HuggingFaceTokenizer:
    """A local Hugging Face ``tokenizers`` tokenizer (``tokenizer.json``), same interface as ByteTokenizer.

    Args:
        path: a ``tokenizer.json`` file, or a directory that contains one (e.g. a Hugging Face model
            directory). Never downloads.
        eos_token, bos_token, pad_token: the special tokens' text. When ``None``, they are read from a
            ``tokenizer_config.json`` next to the file if there is one, else the first common spelling
            present in the vocabulary is used (eos: ``</s>``, ``<|endoftext|>``, ...; bos: ``<s>``, ...;
            pad: ``<pad>``, ...). A missing eos is an error; a missing bos gives ``bos_id = None``; a
            missing pad falls back to the eos id (padding is always masked out of the loss).

    ``encode`` adds no special tokens (the post-processor is bypassed), but, as in transformers, the text
    of a special token inside the data (``"</s>"``, a chat-template marker) is parsed as that token.
    ``decode`` skips special tokens.
    ``vocab_size`` counts added tokens too. ``adds_bos`` follows tokenizer.json's post-processor (see
    ``_adds_bos``): prompt/answer rows start with the bos only when the model's own tokenizer puts one there.
    ``render_chat`` uses the chat template beside the file (``chat_template.jinja`` or tokenizer_config.json's
    ``"chat_template"``); without one it raises a ``ValueError``.
    """

    def __init__(
        self,
        path: str,
        *,
        eos_token: Optional[str] = None,
        bos_token: Optional[str] = None,
        pad_token: Optional[str] = None,
    ) -> None:
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "tokenizer type 'huggingface' needs the `tokenizers` package (pip install tokenizers)"
            ) from exc

        self.path = resolve_tokenizer_file(str(path))
        try:
            self._tok = _HFTokenizer.from_file(self.path)
        except Exception as exc:  # the Rust side raises a bare Exception on a malformed file
            raise ValueError(f"cannot load a Hugging Face tokenizer from {self.path}: {exc}") from exc

        config: dict = {}
        directory = os.path.dirname(os.path.abspath(self.path))
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                loaded = json.load(f)
            config = loaded if isinstance(loaded, dict) else {}

        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        eos = self._find_token("eos", eos_token, _special_from_config(config, "eos_token"), _DEFAULT_EOS)
        if eos is None:
            raise ValueError(
                f"cannot determine the eos token of {self.path}: none of {list(_DEFAULT_EOS)} is in its "
                "vocabulary and no tokenizer_config.json names one; pass eos_token=..."
            )
        self.eos_id: int = eos
        self.bos_id: Optional[int] = self._find_token(
            "bos", bos_token, _special_from_config(config, "bos_token"), _DEFAULT_BOS)
        pad = self._find_token("pad", pad_token, _special_from_config(config, "pad_token"), _DEFAULT_PAD)
        self.pad_id: int = self.eos_id if pad is None else pad
        self.adds_bos: bool = self._adds_bos()
        self.chat_template: Optional[str] = _read_chat_template(directory, config)
        self._template_tokens = self._template_special_tokens(config)

    def _adds_bos(self) -> bool:
        """Whether texts start with the bos as the model was trained: what tokenizer.json's post-processor
        does (Llama 3 adds ``<|begin_of_text|>``, SmolLM2 and Qwen add nothing); a file without a
        post-processor says nothing, and then a tokenizer with a bos token adds it."""
        if self.bos_id is None:
            return False
        if self._tok.post_processor is None:
            return True
        return self._tok.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]

    def _template_special_tokens(self, config: dict) -> dict[str, str]:
        """The special tokens' text a chat template sees (``bos_token``, ``eos_token``, ...), as in
        transformers: tokenizer_config.json's spelling, else the token of the id found here."""
        found = {"bos_token": self.bos_id, "eos_token": self.eos_id, "pad_token": self.pad_id, "unk_token": None}
        tokens: dict[str, str] = {}
        for key, token_id in found.items():
            text = _special_from_config(config, key)
            if text is None and token_id is not None:
                text = self._tok.id_to_token(token_id)
            if text is not None:
                tokens[key] = text
        return tokens

    def _find_token(self, role: str, explicit: Optional[str], configured: Optional[str],
                    defaults: Iterable[str]) -> Optional[int]:
        if explicit is not None:
            token_id = self._tok.token_to_id(explicit)
            if token_id is None:
                raise ValueError(f"{role} token {explicit!r} is not in the vocabulary of {self.path}")
            return int(token_id)
        for token in ((configured,) if configured else ()) + tuple(defaults):
            token_id = self._tok.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def render_chat(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> list[int]:
        """The ids of ``messages`` (``(role, content)`` pairs, possibly none) rendered by the chat template.

        The text comes from transformers' ``render_jinja_template``, the function ``apply_chat_template``
        itself renders with: the same sandboxed Jinja environment and helpers (``raise_exception``,
        ``strftime_now``, ``tojson``, ``trim_blocks``), with the special tokens' text as variables, so the
        text is exactly what the model's users get. It is called directly rather than through a
        ``PreTrainedTokenizerFast`` because ``apply_chat_template`` refuses an empty conversation, and the
        generation prompt before an opening assistant turn is the rendering of none. The text is then
        encoded with this tokenizer, adding no special tokens (the template wrote them), exactly as
        ``apply_chat_template(tokenize=True)`` does. transformers is imported here, on first use only.

        Raises ``ValueError`` without a chat template, or when the template fails (``raise_exception``
        in the template, a Jinja syntax error, ...).
        """
        text = self._render_chat_text(messages, add_generation_prompt)
        return self.encode(text)

    def _render_chat_text(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        """The chat template's text for ``messages`` (see :meth:`render_chat`)."""
        if self.chat_template is None:
            raise ValueError(f"the Hugging Face tokenizer {self.path} has no chat template (no chat_template.jinja "
                             "beside it and no 'chat_template' in its tokenizer_config.json)")
        try:
            from transformers.utils.chat_template_utils import render_jinja_template
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("chat rows need the `transformers` package (pip install transformers)") from exc
        conversation = [{"role": role, "content": content} for role, content in messages]
        try:
            rendered, _ = render_jinja_template(conversations=[conversation], chat_template=self.chat_template,
                                                add_generation_prompt=add_generation_prompt, **self._template_tokens)
        except Exception as exc:  # noqa: BLE001 - a foreign template may fail in any way; report it as data
            raise ValueError(f"the chat template of {self.path} failed: {type(exc).__name__}: {exc}") from None
        return rendered[0]

    def __repr__(self) -> str:
        return f"HuggingFaceTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def train_bpe_tokenizer(
    files: Sequence[str],
    vocab_size: int,
    out_path: str,
    *,
    special_tokens: Sequence[str] = ("<pad>", "<s>", "</s>"),
) -> str:
    """Train a byte-level BPE tokenizer on local text files and save it as a ``tokenizer.json``.

    Byte-level (GPT-2 style) pre-tokenization: every string round-trips through encode/decode, and the
    256 byte symbols are always in the vocabulary, so ``vocab_size`` must be at least
    ``256 + len(special_tokens)``. The special tokens get ids ``0..len(special_tokens)-1`` in order; the
    defaults are the spellings :class:`HuggingFaceTokenizer` finds by itself (pad, bos, eos).
    Training is offline; a tiny corpus may end with fewer merges than ``vocab_size`` allows.

    Args:
        files: plain-text files to learn merges from (a ``.jsonl`` file is read as plain text too).
        vocab_size: target vocabulary size, special tokens included.
        out_path: the file to write (parent directories are created); conventionally ``.../tokenizer.json``.
    Returns:
        ``out_path``, for chaining into :class:`HuggingFaceTokenizer`.
    """
    from tokenizers import Tokenizer as _HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    files = [str(f) for f in files]
    if not files:
        raise ValueError("train_bpe_tokenizer needs at least one training file")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"tokenizer training file does not exist: {f}")
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet + special tokens ({minimum})")

    tokenizer = _HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train(files, trainer)
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    tokenizer.save(str(out_path))
    return str(out_path)


def build_tokenizer(type: str, path: Optional[str] = None) -> Tokenizer:  # noqa: A002 - matches the config key
    """Tokenizer factory for the config's ``tokenizer.type`` / ``tokenizer.path``.

    ``"byte"`` -> :class:`ByteTokenizer` (``path`` must be ``None``);
    ``"huggingface"`` -> :class:`HuggingFaceTokenizer` (``path`` required, local only).
    """
    if type == "byte":
        if path:
            raise ValueError(f"tokenizer type 'byte' takes no path, got path={path!r}")
        return ByteTokenizer()
    if type == "huggingface":
        if not path:
            raise ValueError("tokenizer type 'huggingface' needs a path to a tokenizer.json or its directory")
        return HuggingFaceTokenizer(path)
    raise ValueError(f"unknown tokenizer type {type!r}; expected one of {list(TOKENIZER_TYPES)}")
