"""What became of the rows of one data file: read, kept, cut, dropped, left without loss.

A :class:`FileAccounting` is made by the dataset builders (:func:`~nemo_mft.data.samples.build_sft_dataset`,
:func:`~nemo_mft.data.windows.build_text_eval_dataset`) and travels with the dataset, so that a run can
log it, check it against its limits and store it (:meth:`FileAccounting.to_dict` is JSON-ready).

Counts are rows (jsonl lines), never tokens, except ``loss_tokens``. ``truncated``, ``dropped`` and
``without_loss`` count the rows that were looked at: every row of the file without a ``max_samples``
budget; with one, the rows of the seeded subset (plus the rows dropped while filling it). Line numbers
are 1-based, of the file's first such row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["FileAccounting"]


def _first_line_matches(kind: str, count: int, line: Optional[int]) -> None:
    """``line`` is set exactly when ``count > 0`` (and is a 1-based line then)."""
    if (count > 0) != (line is not None):
        raise ValueError(f"first_{kind} must be given exactly when {kind} > 0 (got {kind}={count}, line {line})")
    if line is not None and line < 1:
        raise ValueError(f"first_{kind} must be a 1-based line number, got {line}")


@dataclass(frozen=True)
class FileAccounting:
    """The row counts of one jsonl file as it was turned into samples.

    Fields:
        path: the file. role: what the run uses it for (``train``, ``replay``, ``validation``, ``general``).
        rows_read: rows in the file (non-blank lines).
        rows_kept: rows that made it into the dataset.
        truncated: kept rows cut to ``seq_length + 1`` tokens (the end of the answer and the eos are lost).
        dropped: rows left out because they would have been cut (``on_overflow="drop"``).
        without_loss: kept rows in which no answer token gets loss: the prompt fills the window, or the
            answer is empty (loss on the eos alone does not count).
        first_truncated, first_dropped, first_without_loss: the first line of each kind, ``None`` when
            there is none.
        loss_tokens: positions with loss in the samples made from this file (what a perplexity averages over).
    """

    path: str
    role: str
    rows_read: int
    rows_kept: int
    truncated: int = 0
    dropped: int = 0
    without_loss: int = 0
    first_truncated: Optional[int] = None
    first_dropped: Optional[int] = None
    first_without_loss: Optional[int] = None
    loss_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("rows_read", "rows_kept", "truncated", "dropped", "without_loss", "loss_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.rows_kept + self.dropped > self.rows_read:
            raise ValueError(f"rows_kept {self.rows_kept} + dropped {self.dropped} exceed rows_read {self.rows_read}")
        if max(self.truncated, self.without_loss) > self.rows_kept:
            raise ValueError(f"truncated {self.truncated} and without_loss {self.without_loss} count kept rows "
                             f"(at most rows_kept {self.rows_kept})")
        _first_line_matches("truncated", self.truncated, self.first_truncated)
        _first_line_matches("dropped", self.dropped, self.first_dropped)
        _first_line_matches("without_loss", self.without_loss, self.first_without_loss)

    @property
    def without_loss_share(self) -> float:
        """``without_loss / rows_kept`` in [0, 1]; 0.0 when no row was kept."""
        return self.without_loss / self.rows_kept if self.rows_kept else 0.0

    def where(self, line: int) -> str:
        """``"<path>:<line>"``, the form every data error uses."""
        return f"{self.path}:{line}"

    def summary(self) -> str:
        """One line for a log, e.g. ``train data/training.jsonl: 500 of 1200 rows kept, 3 truncated (first
        data/training.jsonl:17), 0 dropped, 1 without loss (first data/training.jsonl:40); 51234 loss tokens``."""

        def count(n: int, what: str, line: Optional[int]) -> str:
            return f"{n} {what}" + (f" (first {self.where(line)})" if line is not None else "")

        parts = [count(self.truncated, "truncated", self.first_truncated),
                 count(self.dropped, "dropped", self.first_dropped),
                 count(self.without_loss, "without loss", self.first_without_loss)]
        return (f"{self.role} {self.path}: {self.rows_kept} of {self.rows_read} rows kept, "
                f"{', '.join(parts)}; {self.loss_tokens} loss tokens")

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (first lines as 1-based ints or ``None``), plus ``without_loss_share``."""
        return {**asdict(self), "without_loss_share": self.without_loss_share}
