"""Atomic TIFF output of the command line: nothing is left under the destination's name, and no
temporary file anywhere, unless the whole result was written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ..core import scratch
from .common import UsageError

__all__ = ["AtomicOutput", "check_output_path", "write_tiff"]


class AtomicOutput:
    """A temporary file next to ``path``, renamed onto ``path`` by :meth:`commit`.

    Created at once, so an unwritable destination fails before any work is done; removed by
    :meth:`discard` (called on every error path).
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        check_output_path(self.path)
        if self.path.exists() and not overwrite:
            raise UsageError(f"output {self.path} already exists; pass --overwrite to replace it")
        parent = self.path.parent
        # named and recorded as this process's, so that the next start of any command
        # removes it if this one is killed before it is done
        prefix = f".{self.path.name}.{scratch.owner_tag()}-"
        try:
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
        except OSError as err:
            raise UsageError(f"cannot write {self.path}: {err.strerror or err}") from err
        os.close(fd)
        self.tmp: Path | None = Path(tmp)
        scratch.register(self.tmp)

    def commit(self) -> None:
        assert self.tmp is not None
        os.chmod(self.tmp, 0o666 & ~_umask())
        os.replace(self.tmp, self.path)
        scratch.forget(self.tmp)
        self.tmp = None

    def discard(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            scratch.forget(self.tmp)
            self.tmp = None

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.discard()


def check_output_path(path: Path) -> None:
    """Refuse an output path that is not a TIFF file in an existing folder we may write."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"output {path} must be a .tif or .tiff file")
    if path.is_dir():
        raise UsageError(f"output {path} is a directory")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is not a directory")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: the folder {parent} is read-only")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tiff(tmp: Path, labels: Any, axes: str) -> None:
    import numpy as np
    import tifffile

    imagej = labels.dtype in (np.uint8, np.uint16)
    tifffile.imwrite(tmp, labels, imagej=imagej, photometric="minisblack",
                     metadata={"axes": axes})
