"""Two real, offline corpora for the demo, from Debian packages: general English and a specialized domain.

General domain: the ``fortunes`` package (fortune-mod's data files, Debian main, BSD licence): about
15,000 short human-written English texts (quotations, anecdotes, jokes, definitions, verse) filed under
40-odd everyday topics (people, science, politics, work, love, food, sports, education, literature, ...),
about 2.5 MB. Broad, informal, modern English: a stand-in for the paper's OpenWebText.

Specialized domain: the King James Bible from ``bible-kjv-text`` + ``bible-kjv`` (the text is public
domain; the retrieval program is GPL-2+): 1,189 chapters, 31,102 verses, about 4.3 MB of Early Modern
English with its own vocabulary (thee, hath, begat, ...) and rhythm. ``bible`` decodes the packaged data
file, so the text is exactly what the package ships, with no network access at run time.

Both are installed with ``apt-get install fortunes bible-kjv bible-kjv-text`` (see ``make demo``), in a
few seconds. Everything below is deterministic: documents are assigned to splits by a hash of their
stable id, never by a random generator, so the splits are identical on every machine.

Documents and splits:

* general: one fortune = one document, id ``"<file>/<index>"``. Rows ``{"text": fortune}``.
* domain: one chapter = one document, id ``"<book><chapter>"`` (e.g. ``"Ge1"``). A chapter is cut into
  passages of whole consecutive verses of at most ``passage_chars`` characters; rows ``{"text": passage}``
  (the paper's generation-domain setting: loss on every token). Passages of one chapter never straddle
  splits, so test passages come from chapters the model never saw in training.

Files written by :func:`prepare_corpora` (``out_dir``)::

    general/{training,validation,test}.jsonl
    domain/{training,validation,test}.jsonl
    manifest.json        sources, package versions, split sizes and sha256 of every file
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

__all__ = [
    "CorpusUnavailable",
    "Document",
    "APT_PACKAGES",
    "FORTUNE_DIR",
    "EXCLUDED_FORTUNE_FILES",
    "clean_text",
    "read_fortunes",
    "parse_fortune_file",
    "read_kjv",
    "parse_kjv_lines",
    "split_of",
    "split_documents",
    "chapter_passages",
    "prepare_corpora",
    "check_sources",
]

APT_PACKAGES = ("fortunes", "bible-kjv", "bible-kjv-text")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
BIBLE_DATA = Path("/usr/lib/bible.data")
# ascii-art is pictures, translate-me is a single joke file about translation.
EXCLUDED_FORTUNE_FILES = frozenset({"ascii-art", "translate-me"})
SPLITS = ("training", "validation", "test")
INSTALL_HINT = ("install the demo corpora with `sudo apt-get install " + " ".join(APT_PACKAGES)
                + "` (or run `make demo`, which does it when it runs as root)")


class CorpusUnavailable(RuntimeError):
    """A source package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Document:
    """One source document: a stable ``id`` (decides the split) and its cleaned ``text``."""

    id: str
    text: str


# --------------------------------------------------------------------------------------------- cleaning

_OVERSTRIKE = re.compile(r".\x08")  # nroff bold/underline: "_\bx", "x\bx"
_TRAILING_WS = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Normalize one document: drop overstrike sequences and control characters, tabs -> 4 spaces,
    strip trailing blanks on every line and around the text, at most one empty line in a row."""
    text = _OVERSTRIKE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\t", "    ")
    text = _CONTROL.sub("", text)
    text = _TRAILING_WS.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------------------------- general

def parse_fortune_file(name: str, raw: bytes, *, min_chars: int = 20) -> tuple[list[Document], int]:
    """Fortunes of one strfile source (entries separated by lines holding only ``%``).

    Returns ``(documents, dropped)``. Entries that are shorter than ``min_chars`` after cleaning, or not
    plain ASCII (a handful of mis-encoded entries in the package), are dropped and counted.
    """
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    docs, dropped = [], 0
    for index, entry in enumerate(re.split(r"(?m)^%[ \t]*\n", text + "\n")):
        cleaned = clean_text(entry)
        if not cleaned:
            continue
        if len(cleaned) < min_chars or not cleaned.isascii():
            dropped += 1
            continue
        docs.append(Document(id=f"{name}/{index}", text=cleaned))
    return docs, dropped


def read_fortunes(fortune_dir: Path | str = FORTUNE_DIR, *,
                  exclude: Iterable[str] = EXCLUDED_FORTUNE_FILES) -> tuple[list[Document], dict]:
    """All general-domain documents, in a fixed order (file name, then position), and per-file stats."""
    fortune_dir = Path(fortune_dir)
    if not fortune_dir.is_dir():
        raise CorpusUnavailable(f"general corpus: {fortune_dir} does not exist; {INSTALL_HINT}")
    excluded = set(exclude)
    docs: list[Document] = []
    stats: dict[str, dict] = {}
    for path in sorted(fortune_dir.iterdir()):
        # strfile sources have no extension; *.dat are indexes, *.u8 symlinks to the same sources.
        if path.suffix or path.is_symlink() or not path.is_file() or path.name in excluded:
            continue
        file_docs, dropped = parse_fortune_file(path.name, path.read_bytes())
        docs.extend(file_docs)
        stats[path.name] = {"documents": len(file_docs), "dropped": dropped}
    if not docs:
        raise CorpusUnavailable(f"general corpus: no fortune files found in {fortune_dir}; {INSTALL_HINT}")
    return docs, stats


# --------------------------------------------------------------------------------------------- domain

_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")


def parse_kjv_lines(lines: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``"Ge1:1 In the beginning ..."`` lines -> ``[(chapter id, [verse texts in order])]``."""
    chapters: list[tuple[str, list[str]]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        match = _VERSE.match(line)
        if match is None:
            raise ValueError(f"unexpected line {number} from the bible program: {line[:80]!r}")
        book, chapter, _verse, text = match.groups()
        chapter_id = f"{book}{chapter}"
        if not chapters or chapters[-1][0] != chapter_id:
            chapters.append((chapter_id, []))
        chapters[-1][1].append(clean_text(text))
    return chapters


def _bible_program() -> str:
    exe = shutil.which("bible") or ("/usr/bin/bible" if os.path.exists("/usr/bin/bible") else None)
    if exe is None or not BIBLE_DATA.is_file():
        raise CorpusUnavailable(f"domain corpus: the `bible` program or {BIBLE_DATA} is missing; {INSTALL_HINT}")
    return exe


def read_kjv() -> list[tuple[str, list[str]]]:
    """The whole King James Bible as ``[(chapter id, verses)]`` (1,189 chapters), via ``bible``."""
    exe = _bible_program()
    env = dict(os.environ, COLUMNS="100000")  # no line wrapping: one verse per line
    proc = subprocess.run([exe, "-f", "gen1:1-rev22:21"], capture_output=True, env=env,
                          stdin=subprocess.DEVNULL, check=False, timeout=120)
    if proc.returncode != 0:
        raise CorpusUnavailable(f"domain corpus: `{exe}` failed ({proc.returncode}): "
                                f"{proc.stderr.decode(errors='replace')[:300]}")
    return parse_kjv_lines(proc.stdout.decode("utf-8", errors="replace").splitlines())


def chapter_passages(verses: Sequence[str], passage_chars: int) -> list[str]:
    """Cut one chapter into passages of whole consecutive verses, each at most ``passage_chars``
    characters (a single longer verse is a passage by itself). Verses are joined by a space."""
    passages: list[str] = []
    current: list[str] = []
    length = 0
    for verse in verses:
        extra = len(verse) + (1 if current else 0)
        if current and length + extra > passage_chars:
            passages.append(" ".join(current))
            current, length = [], 0
            extra = len(verse)
        current.append(verse)
        length += extra
    if current:
        passages.append(" ".join(current))
    return passages


# --------------------------------------------------------------------------------------------- splits

def split_of(doc_id: str, fractions: Sequence[float], salt: str) -> str:
    """The split (``training`` / ``validation`` / ``test``) of a document: a sha256 bucket of its id."""
    digest = hashlib.sha256(f"{salt}/{doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]


def split_documents(ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), *,
                    salt: str) -> dict[str, list[int]]:
    """Indices of ``ids`` per split, each list in the input order. Deterministic, platform-independent,
    and stable under adding or removing other documents (each id decides alone)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for index, doc_id in enumerate(ids):
        out[split_of(doc_id, fractions, salt)].append(index)
    return out


# --------------------------------------------------------------------------------------------- output

def _write_jsonl(path: Path, texts: Iterable[str]) -> tuple[int, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rows = chars = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            rows += 1
            chars += len(text)
    os.replace(tmp, path)
    return rows, chars


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package_version(name: str) -> Optional[str]:
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.decode().strip() or None if proc.returncode == 0 else None


def check_sources() -> None:
    """Raise :class:`CorpusUnavailable` (with the install command) unless both sources are installed."""
    if not FORTUNE_DIR.is_dir():
        raise CorpusUnavailable(f"general corpus: {FORTUNE_DIR} does not exist; {INSTALL_HINT}")
    _bible_program()


def prepare_corpora(out_dir: Path | str, *, passage_chars: int = 480,
                    fractions: Sequence[float] = (0.8, 0.1, 0.1),
                    fortune_dir: Path | str = FORTUNE_DIR,
                    kjv_chapters: Optional[list[tuple[str, list[str]]]] = None) -> dict:
    """Write the general and domain splits under ``out_dir`` (see the module docstring).

    Args:
        passage_chars: maximum characters of a domain passage (480 is about 110-120 tokens of a 4k BPE).
        fractions: training / validation / test shares, by document.
        fortune_dir, kjv_chapters: alternative sources (tests); ``None`` reads the installed Bible.
    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    out = Path(out_dir)
    general_docs, general_stats = read_fortunes(fortune_dir)
    chapters = read_kjv() if kjv_chapters is None else kjv_chapters

    manifest: dict = {
        "format": 1,
        "passage_chars": passage_chars,
        "fractions": list(fractions),
        "general": {"source": "Debian package fortunes (fortune-mod data), BSD licence",
                    "package_version": _package_version("fortunes"),
                    "excluded_files": sorted(EXCLUDED_FORTUNE_FILES),
                    "documents": len(general_docs),
                    "dropped": sum(s["dropped"] for s in general_stats.values()),
                    "splits": {}},
        "domain": {"source": "King James Bible via Debian packages bible-kjv-text + bible-kjv, public-domain text",
                   "package_version": _package_version("bible-kjv-text"),
                   "documents": len(chapters), "verses": sum(len(v) for _, v in chapters),
                   "splits": {}},
    }

    general_split = split_documents([d.id for d in general_docs], fractions, salt="general")
    for name, indices in general_split.items():
        path = out / "general" / f"{name}.jsonl"
        rows, chars = _write_jsonl(path, (general_docs[i].text for i in indices))
        manifest["general"]["splits"][name] = {"rows": rows, "chars": chars, "sha256": _sha256(path)}

    domain_split = split_documents([cid for cid, _ in chapters], fractions, salt="domain")
    for name, indices in domain_split.items():
        path = out / "domain" / f"{name}.jsonl"
        passages = [p for i in indices for p in chapter_passages(chapters[i][1], passage_chars)]
        rows, chars = _write_jsonl(path, passages)
        manifest["domain"]["splits"][name] = {"documents": len(indices), "rows": rows, "chars": chars,
                                              "sha256": _sha256(path)}

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest
