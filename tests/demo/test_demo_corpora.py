import json

import pytest

from nemo_mft.data import read_jsonl_rows
from nemo_mft.demo import corpora
from nemo_mft.demo.corpora import (
    CorpusUnavailable,
    chapter_passages,
    clean_text,
    parse_fortune_file,
    parse_kjv_lines,
    prepare_corpora,
    split_documents,
    split_of,
)


def test_clean_text_overstrike_tabs_blank_lines():
    raw = "B\bBo\bol\bld  \n\n\n\n_\bu_\bn\tx \r\n  "
    assert clean_text(raw) == "Bold\n\nun    x"


def test_parse_fortune_file_splits_on_percent_and_drops_junk():
    raw = ("A first fortune that is long enough.\n%\nshort\n%\n"
           "Second one,\n\twith an attribution.\n        -- Someone\n%\n"
           "Caf\u00e9 is not ascii but long enough here.\n%\n").encode()
    docs, dropped = parse_fortune_file("people", raw)
    assert [d.text for d in docs] == ["A first fortune that is long enough.",
                                      "Second one,\n    with an attribution.\n        -- Someone"]
    assert [d.id for d in docs] == ["people/0", "people/2"]
    assert dropped == 2


def test_parse_kjv_lines_groups_chapters():
    lines = ["Ge1:1 In the beginning.", "Ge1:2 And the earth.", "Ge2:1 Thus the heavens.",
             "1Jo1:1 That which was from the beginning.", ""]
    assert parse_kjv_lines(lines) == [("Ge1", ["In the beginning.", "And the earth."]),
                                      ("Ge2", ["Thus the heavens."]),
                                      ("1Jo1", ["That which was from the beginning."])]
    with pytest.raises(ValueError, match="unexpected line 1"):
        parse_kjv_lines(["not a verse"])


def test_chapter_passages_whole_verses_under_limit():
    verses = ["a" * 10, "b" * 10, "c" * 10, "d" * 30, "e" * 5]
    assert chapter_passages(verses, 21) == ["a" * 10 + " " + "b" * 10, "c" * 10, "d" * 30, "e" * 5]
    assert chapter_passages(verses, 1000) == [" ".join(verses)]
    assert chapter_passages([], 10) == []


def test_split_is_deterministic_and_proportional():
    ids = [f"doc{i}" for i in range(20000)]
    a = split_documents(ids, (0.8, 0.1, 0.1), salt="x")
    assert a == split_documents(ids, (0.8, 0.1, 0.1), salt="x")
    assert sorted(sum(a.values(), [])) == list(range(20000))
    assert abs(len(a["test"]) / 20000 - 0.1) < 0.01 and abs(len(a["training"]) / 20000 - 0.8) < 0.01
    # Each id decides alone: a subset of ids keeps its splits.
    assert all(split_of(ids[i], (0.8, 0.1, 0.1), "x") == "test" for i in a["test"])
    assert split_documents(ids, (0.8, 0.1, 0.1), salt="y") != a
    with pytest.raises(ValueError):
        split_documents(ids, (0.5, 0.5, 0.5), salt="x")


def _fake_sources(tmp_path):
    fortune_dir = tmp_path / "fortunes"
    fortune_dir.mkdir()
    for name in ("people", "science", "ascii-art"):
        body = "\n%\n".join(f"{name} fortune number {i} with some words in it." for i in range(60))
        (fortune_dir / name).write_text(body + "\n%\n")
        (fortune_dir / f"{name}.dat").write_bytes(b"\0\1")
    (fortune_dir / "people.u8").symlink_to(fortune_dir / "people")
    chapters = [(f"Ge{c}", [f"Verse {v} of chapter {c}, and it came to pass." for v in range(1, 30)])
                for c in range(1, 51)]
    return fortune_dir, chapters


def test_prepare_corpora_writes_disjoint_splits(tmp_path):
    fortune_dir, chapters = _fake_sources(tmp_path)
    out = tmp_path / "out"
    manifest = prepare_corpora(out, fortune_dir=fortune_dir, kjv_chapters=chapters, passage_chars=120)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["general"]["documents"] == 120  # ascii-art excluded, .dat / .u8 ignored
    texts = {}
    for domain in ("general", "domain"):
        for split in ("training", "validation", "test"):
            rows = read_jsonl_rows(str(out / domain / f"{split}.jsonl"))
            assert all(r.format == "text" and r.answer for r in rows)
            texts[domain, split] = {r.answer for r in rows}
            assert manifest[domain]["splits"][split]["rows"] == len(rows)
        assert not texts[domain, "training"] & texts[domain, "test"]
    assert all(len(t) <= 120 for t in texts["domain", "training"])
    # Same inputs, same bytes.
    again = prepare_corpora(tmp_path / "again", fortune_dir=fortune_dir, kjv_chapters=chapters, passage_chars=120)
    assert again["domain"]["splits"] == manifest["domain"]["splits"]
    assert again["general"]["splits"] == manifest["general"]["splits"]


def test_missing_sources_say_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(CorpusUnavailable, match="apt-get install fortunes bible-kjv bible-kjv-text"):
        prepare_corpora(tmp_path / "o", fortune_dir=tmp_path / "nope", kjv_chapters=[])
    monkeypatch.setattr(corpora.shutil, "which", lambda name: None)
    monkeypatch.setattr(corpora, "BIBLE_DATA", tmp_path / "missing.data")
    monkeypatch.setattr(corpora.os.path, "exists", lambda p: False)
    with pytest.raises(CorpusUnavailable, match="bible"):
        corpora.read_kjv()


@pytest.mark.skipif(not corpora.FORTUNE_DIR.is_dir() or not corpora.BIBLE_DATA.is_file(),
                    reason="Debian packages fortunes / bible-kjv(-text) not installed (make demo installs them)")
def test_real_corpora(tmp_path):
    manifest = prepare_corpora(tmp_path)
    assert manifest["domain"]["documents"] == 1189 and manifest["domain"]["verses"] == 31102
    assert manifest["general"]["documents"] > 10000
    assert manifest["domain"]["splits"]["training"]["rows"] > 2000
    assert manifest["general"]["splits"]["test"]["chars"] > 100_000
    first = read_jsonl_rows(str(tmp_path / "domain" / "training.jsonl"))[0].answer
    assert first.startswith("In the beginning God created the heaven and the earth.")
