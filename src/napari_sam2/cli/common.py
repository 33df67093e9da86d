"""What every part of the command line shares: the program name, exit statuses, usage errors,
one-line error messages, the status printer and the ``--debug`` / ``--quiet`` options."""

from __future__ import annotations

import argparse
import sys

__all__ = [
    "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_USAGE", "PROG",
    "UsageError", "add_common_options", "one_line", "say",
]

PROG = "napari-sam2"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(BaseException):
    """Raised from the SIGTERM handler so that clean-up code runs."""


class UsageError(Exception):
    """Bad usage or input (missing file, malformed CSV, ...): exit status 2."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError without its quotes)."""
    text = str(err) or type(err).__name__
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    return " ".join(text.split())


def say(message: str) -> None:
    """Print a status line, ``napari-sam2: MESSAGE``, on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def add_common_options(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``--debug`` and ``-q/--quiet``, on the top-level parser (``top``) and on each command.

    Only the top level sets their defaults, so that they can be given before or after the
    command name.
    """
    default = False if top else argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", default=default,
                   help="show tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars")
