"""``napari-sam2 models`` and ``napari-sam2 download``: list the official checkpoints and which
are cached, and what ``--precision auto`` means on this machine; download and verify one."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, UsageError, add_common_options, one_line

__all__ = ["add_parsers", "run_download", "run_models"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` and ``download`` commands to the subcommands ``sub``."""
    p = sub.add_parser("models", help="list the official checkpoints and which are cached")
    add_common_options(p)
    p.set_defaults(func=run_models)

    p = sub.add_parser("download", help="download an official checkpoint into the cache",
                       description="Download (once) and verify an official checkpoint; print "
                                   "its path.")
    p.add_argument("name", metavar="NAME", help="e.g. sam2.1_hiera_tiny (see 'models')")
    add_common_options(p)
    p.set_defaults(func=run_download)


def run_models(args: argparse.Namespace) -> int:
    """Print the checkpoint cache and a table of the official checkpoints."""
    from ..models.checkpoints import REGISTRY, checkpoint_path
    from ..models.download import cache_dir

    rows = [("name", "config", "download", "cached", "path")]
    for name, info in REGISTRY.items():
        path = checkpoint_path(name, download=False)
        rows.append((name, info.config, f"~{info.size_mb} MB",
                     "yes" if path.is_file() else "no", str(path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"checkpoint cache: {cache_dir()} (set NAPARI_SAM2_CACHE to change it)")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    print(machine_line())
    return EXIT_OK


def machine_line() -> str:
    """``this machine: CPU ...; --precision auto on cpu -> bf16: this CPU has AMX (...)``."""
    from ..models.checkpoints import resolve_device
    from ..models.precision_policy import cpu_info, resolve_precision

    device = resolve_device("auto")
    choice = resolve_precision("auto", device)
    return (f"this machine: {cpu_info().describe()}; --precision auto on {device.type} -> "
            f"{choice.describe()}")


def run_download(args: argparse.Namespace) -> int:
    """Download ``args.name`` into the cache (once), verify it and print its path."""
    from ..models.checkpoints import (
        _ALIASES,
        REGISTRY,
        CheckpointError,
        checkpoint_path,
        read_state_dict,
    )

    if args.name not in REGISTRY and args.name not in _ALIASES:
        raise UsageError(f"unknown model {args.name!r}: use one of {', '.join(REGISTRY)}")
    path = checkpoint_path(args.name, progress=not args.quiet)
    try:
        read_state_dict(path)  # a complete, safe PyTorch checkpoint?
    except CheckpointError as err:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"{one_line(err)} The file was removed; try again.") from err
    print(path)
    return EXIT_OK
