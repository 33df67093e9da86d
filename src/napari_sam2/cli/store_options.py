"""The embedding-store options of ``track``, ``segment`` and ``embed`` (``--store``,
``--no-store``), and turning a damaged or foreign store into a usage error."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from .common import UsageError, one_line

__all__ = ["add_store_options", "store_errors", "store_spec"]


def add_store_options(p: argparse.ArgumentParser, out: bool = False) -> None:
    """The "embeddings" argument group; ``out`` spells the path option ``--out`` (``embed``)."""
    g = p.add_argument_group("embeddings")
    flags = ("--out", "--store") if out else ("--store",)
    g.add_argument(*flags, dest="store", default=None, metavar="STORE.zarr",
                   help="embedding store: image features are read from it when stored for "
                        "the same frames, model and settings, and written to it otherwise "
                        "(default: one store per stack in the user cache; see 'cache')")
    if not out:
        g.add_argument("--no-store", action="store_true",
                       help="keep image features in RAM only")


def store_spec(args: argparse.Namespace) -> Any:
    """The ``store=`` argument the options ask for (``None``: the user cache)."""
    if getattr(args, "no_store", False):
        if args.store is not None:
            raise UsageError("give --store STORE or --no-store, not both")
        return False
    return args.store


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """A path that holds something else than a store is bad input (exit 2), not a crash."""
    from ..core.store.embedding_store import StoreError

    try:
        yield
    except StoreError as err:
        raise UsageError(one_line(err)) from err
