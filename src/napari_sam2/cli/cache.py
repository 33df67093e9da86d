"""``napari-sam2 cache``: list the embedding stores in the user cache, or remove them."""

from __future__ import annotations

import argparse
import time

from .common import EXIT_OK, UsageError, add_common_options

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``cache`` command to the subcommands ``sub``."""
    p = sub.add_parser(
        "cache", help="list (or --clear) the embedding stores in the user cache",
        description="List the image features kept in the user cache (data, model, precision, "
                    "frames stored, size, last use), least recently used first; with --clear "
                    "remove them (all, or those unused for --older-than DAYS).",
    )
    p.add_argument("--clear", action="store_true", help="remove stored features")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="with --clear: only features not used for this many days")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="the stores' folder (default: $NAPARI_SAM2_EMBEDDINGS, else "
                        "$NAPARI_SAM2_CACHE/embeddings)")
    add_common_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List or clear the stores."""
    from ..core.store.location import (
        budget_bytes,
        clear_stores,
        default_root,
        format_bytes,
        list_stores,
    )

    if args.older_than is not None and not args.clear:
        raise UsageError("--older-than goes with --clear")
    if args.older_than is not None and not args.older_than >= 0:
        raise UsageError(f"--older-than must be >= 0 days, got {args.older_than}")
    root = args.root if args.root is not None else default_root()
    if args.clear:
        removed = clear_stores(root, args.older_than)
        print(f"removed {len(removed)} stored feature set{'s' * (len(removed) != 1)} from {root}")
        return EXIT_OK
    entries = list_stores(root)
    total = sum(e.size_bytes for e in entries)
    budget = format_bytes(budget_bytes())
    print(f"embedding stores in {root}: {format_bytes(total)} of a {budget} budget "
          "(set NAPARI_SAM2_STORE_GB to change it)")
    if not entries:
        print("  (none)")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        print(
            f"  {used}  {format_bytes(e.size_bytes):>9}  {e.complete:>5}/{e.frames:<5} "
            f"{e.model} ({e.config}, {e.precision}, {e.input} {e.image_size})  {e.data}"
        )
    return EXIT_OK
