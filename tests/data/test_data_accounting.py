"""FileAccounting: its invariants, the one-line summary and the JSON dict."""

import json

import pytest

from nemo_mft.data.accounting import FileAccounting


def _accounting(**changes):
    values = dict(path="d/training.jsonl", role="train", rows_read=10, rows_kept=8, truncated=2, dropped=1,
                  without_loss=1, first_truncated=3, first_dropped=5, first_without_loss=3, loss_tokens=40)
    return FileAccounting(**{**values, **changes})


def test_summary_is_one_line_with_file_and_lines():
    line = _accounting().summary()
    assert "\n" not in line
    assert line == ("train d/training.jsonl: 8 of 10 rows kept, 2 truncated (first d/training.jsonl:3), "
                    "1 dropped (first d/training.jsonl:5), 1 without loss (first d/training.jsonl:3); 40 loss tokens")
    clean = _accounting(truncated=0, dropped=0, without_loss=0, first_truncated=None, first_dropped=None,
                        first_without_loss=None)
    assert "0 truncated, 0 dropped, 0 without loss;" in clean.summary()


def test_to_dict_is_json_and_complete():
    acc = _accounting()
    data = json.loads(json.dumps(acc.to_dict()))
    assert data["without_loss_share"] == pytest.approx(1 / 8)
    del data["without_loss_share"]
    assert FileAccounting(**data) == acc
    assert _accounting(rows_kept=0, truncated=0, without_loss=0, first_truncated=None,
                       first_without_loss=None).without_loss_share == 0.0


@pytest.mark.parametrize("changes, message", [
    (dict(rows_read=-1), "rows_read must be an integer >= 0"),
    (dict(rows_kept=10), r"rows_kept 10 \+ dropped 1 exceed rows_read 10"),
    (dict(without_loss=9, first_without_loss=1), "count kept rows"),
    (dict(first_truncated=None), "first_truncated must be given exactly when truncated > 0"),
    (dict(dropped=0), "first_dropped must be given exactly when dropped > 0"),
    (dict(first_without_loss=0), "1-based line number"),
])
def test_inconsistent_counts_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _accounting(**changes)


def test_frozen():
    with pytest.raises(AttributeError):
        _accounting().rows_kept = 3
