"""``napari-sam2`` command line: track and segment without a GUI, manage checkpoints, run a demo.

Commands::

    napari-sam2 track STACK --points POINTS.csv [--boxes BOXES.csv] --out LABELS.tif
    napari-sam2 segment IMAGE --auto --out LABELS.tif
    napari-sam2 segment IMAGE --points POINTS.csv [--boxes BOXES.csv] --out MASK.tif
    napari-sam2 embed STACK [--out STORE.zarr] [--range A:B]
    napari-sam2 cache [--clear [--older-than DAYS]]
    napari-sam2 models
    napari-sam2 download NAME
    napari-sam2 demo [--model PATH]

Prompts are CSV files saved from napari Points / Shapes layers ("File > Save Selected
Layers..."); see :mod:`napari_sam2.core.annotations` for the columns used (``obj_id``,
``positive``).

Outputs are written atomically: into a temporary file next to the destination, renamed onto it
only when complete; after an error, Ctrl-C or SIGTERM no output (and no temporary file) is
left. Exit status: 0 success, 1 runtime failure, 2 bad usage or input, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). Errors are one line, ``napari-sam2: error: ...``; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import traceback
from typing import Any

from . import cache, demo, embed, models, segment, track
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    PROG,
    Terminated,
    UsageError,
    add_common_options,
    one_line,
    say,
)

__all__ = ["build_parser", "main"]




def build_parser() -> argparse.ArgumentParser:
    """The ``napari-sam2`` parser; each command sets ``func``, the function that runs it."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment Anything 2 for microscopy: track objects through time-lapses and "
                    "z-stacks, segment images, manage checkpoints.",
        epilog="Exit status: 0 ok, 1 failure, 2 bad usage or input, 130 interrupted.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    track.add_parser(sub)
    segment.add_parser(sub)
    embed.add_parser(sub)
    cache.add_parser(sub)
    models.add_parsers(sub)
    demo.add_parser(sub)
    return parser


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse usage errors raise SystemExit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..core.scratch import remove_stale

    remove_stale()  # what a killed run of ours left behind
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        say("terminated")
        return EXIT_TERMINATED
    except Exception as err:  # noqa: BLE001 - every failure becomes one line (or a traceback)
        if args.debug:
            traceback.print_exc()
        usage = isinstance(err, UsageError)
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USAGE if usage else EXIT_FAILURE
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)
