"""The commands' error contract.

A user error (a recipe value, an unknown key, an override that does not parse, a recipe or directory that
does not exist, data or paths the run cannot use) is a :class:`UsageError`: the command prints one line,
``nemo-mft <command>: error: <message>``, on stderr and exits with status 2, without a traceback. With
``NEMO_MFT_DEBUG=1`` in the environment the traceback is printed above that line (the status stays 2).
Any other exception is a bug: it propagates, Python prints its traceback and the status is 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional, TextIO

PROG = "nemo-mft"
DEBUG_ENV = "NEMO_MFT_DEBUG"
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line, exit status 2."""


def one_line(text: str) -> str:
    """``text`` with its lines joined by single spaces (an error message is one line of stderr)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def debug_enabled(environ: Mapping[str, str]) -> bool:
    """Whether ``NEMO_MFT_DEBUG`` asks for tracebacks (any value but empty, 0, false, no, off)."""
    return environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def report_usage_error(command: str, err: BaseException, *, stream: TextIO, show_traceback: bool) -> None:
    """Write ``nemo-mft COMMAND: error: MESSAGE`` to ``stream`` (after the traceback if asked for)."""
    if show_traceback:
        traceback.print_exception(type(err), err, err.__traceback__, file=stream)
    message = one_line(str(err)) or type(err).__name__
    print(f"{PROG} {command}: error: {message}", file=stream)


@contextmanager
def reported_errors(command: str, environ: Optional[Mapping[str, str]] = None) -> Iterator[None]:
    """Turn a :class:`UsageError` raised inside into the one-line report and ``SystemExit(2)``."""
    try:
        yield
    except UsageError as err:
        report_usage_error(command, err, stream=sys.stderr,
                           show_traceback=debug_enabled(os.environ if environ is None else environ))
        sys.exit(EXIT_USAGE)


__all__ = ["PROG", "DEBUG_ENV", "EXIT_USAGE", "UsageError", "one_line", "debug_enabled", "report_usage_error",
           "reported_errors"]
