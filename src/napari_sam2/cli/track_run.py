"""One ``napari-sam2 track`` run's labels while they are written, so that a killed run can be
resumed (``--resume``) and two runs never write one output.

The labels are written frame by frame into ``labels.tif`` in a run folder of the cache
(``$NAPARI_SAM2_CACHE/runs/<digest of the command>/``), with ``run.json`` listing the frames
finished; nothing is put next to the output until the run is complete, when the file is moved
onto the output (copied through a temporary file when the cache is on another file system).
A run folder outlives a killed process on purpose; one that was not resumed within a week is
removed.

Resuming re-tracks every frame, reading the image features from the embedding store (no
encoding for frames stored before the kill): SAM 2's memory of a frame depends on every
frame tracked before it, and it is not kept on disk, so the only way to give exactly the
labels of an uninterrupted run is to track again; the frames finished before are checked to
come out the same.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core import scratch
from .common import UsageError, say

__all__ = ["TrackRun"]

_KEEP_S = 7 * 24 * 3600.0  # an unresumed run folder is removed after a week


def _runs_folder() -> Path:
    from ..models.download import cache_dir

    return cache_dir() / "runs"


def remove_old_runs(now: float | None = None) -> None:
    """Remove run folders of gone processes that nobody resumed within a week."""
    now = time.time() if now is None else now
    with contextlib.suppress(OSError):
        for folder in _runs_folder().iterdir():
            record = _read(folder / "run.json")
            if record and scratch.is_alive(str(record.get("owner", ""))):
                continue
            with contextlib.suppress(OSError):
                if now - (folder / "run.json").stat().st_mtime > _KEEP_S:
                    shutil.rmtree(folder, ignore_errors=True)


def _reserve(path: Path) -> None:
    """Allocate the whole file now: on a full disk this fails here with ENOSPC, instead of
    the memory-mapped writes killing the process (SIGBUS) half-way through the run."""
    size = path.stat().st_size
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # unsupported file system: skip
            raise
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


class TrackRun:
    """The labels of one track command while they are written.

    Args:
        out: the output TIFF.
        command: what makes two runs the same run (inputs, prompts, settings), as JSON values.
        shape, dtype, axes: of the label volume.
        resume: continue an interrupted run of the same command if there is one.
        overwrite: replace an existing output.
    """

    def __init__(
        self, out: Path, command: dict[str, Any], shape: tuple[int, int, int], dtype: Any,
        axes: str, resume: bool, overwrite: bool,
    ) -> None:
        self.out = Path(out).absolute()
        if self.out.exists() and not overwrite:
            raise UsageError(f"output {out} already exists; pass --overwrite to replace it")
        text = json.dumps({**command, "out": str(self.out), "shape": list(shape),
                           "dtype": str(np.dtype(dtype))}, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        self.folder = _runs_folder() / digest
        self.labels_path = self.folder / "labels.tif"
        self.record_path = self.folder / "run.json"
        self._lock = self._lock_output()
        remove_old_runs()
        self.done = np.zeros(shape[0], dtype=bool)
        self.before = np.zeros(shape[0], dtype=bool)  # finished by the interrupted run
        previous = _read(self.record_path)
        if previous and self.labels_path.is_file():
            finished = int(len(previous.get("done", [])))
            if resume:
                self.before[[int(i) for i in previous.get("done", [])]] = True
                say(f"resuming: the interrupted run had finished {finished} of {shape[0]} "
                    "frames; tracking again from stored features to rebuild SAM 2's memory")
            else:
                say(f"an interrupted run of this command had finished {finished} of "
                    f"{shape[0]} frames; --resume continues it. Starting over.")
        elif resume:
            say("nothing to resume for this command: starting from the beginning")
        if not self.before.any():
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        import tifffile

        try:
            if self.before.any():
                self.labels = tifffile.memmap(self.labels_path, mode="r+")
                if self.labels.shape != tuple(shape):
                    raise ValueError("the interrupted run's labels have another shape")
            else:
                self.labels = tifffile.memmap(
                    self.labels_path, shape=shape, dtype=dtype, imagej=np.dtype(dtype) ==
                    np.uint16, photometric="minisblack", metadata={"axes": axes},
                )
            if not self.before.any():
                _reserve(self.labels_path)
        except (OSError, ValueError) as err:
            self.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            reason = getattr(err, "strerror", None) or err
            raise UsageError(
                f"cannot write the labels of {out} in {self.folder} ({reason}); free some "
                "space there or set NAPARI_SAM2_CACHE to a folder on another disk"
            ) from err
        self._previous = {int(i): self.labels[int(i)].copy() for i in np.flatnonzero(self.before)}
        self.changed: list[int] = []  # finished before, different now (should stay empty)
        self._save_record()

    def _lock_output(self) -> Any:
        from filelock import FileLock, Timeout

        from ..core.store.folders import default_root

        locks = default_root() / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(str(self.out).encode()).hexdigest()[:24]
        lock = FileLock(str(locks / f"output-{name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UsageError(
                f"another napari-sam2 run is writing {self.out} now; wait for it to finish "
                "or choose another --out"
            ) from None
        return lock

    def _save_record(self) -> None:
        record = {"owner": scratch.owner_tag(), "out": str(self.out),
                  "done": [int(i) for i in np.flatnonzero(self.done | self.before)]}
        tmp = self.record_path.with_name(".run.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, self.record_path)

    def frame_done(self, frame_idx: int) -> None:
        """Frame ``frame_idx`` of :attr:`labels` is final: make it durable and record it."""
        if frame_idx in self._previous and not np.array_equal(
            self._previous.pop(frame_idx), self.labels[frame_idx]
        ):
            self.changed.append(frame_idx)
        self.labels.flush()
        self.done[frame_idx] = True
        self._save_record()

    def commit(self) -> None:
        """Move the finished labels onto the output; the run folder goes. If the output
        cannot be written (a folder turned read-only, a full disk), the run folder stays and
        the message says how to finish with ``--resume``."""
        self.labels.flush()
        del self.labels
        try:
            self._move_onto_output()
        except OSError as err:
            self.close()
            raise UsageError(
                f"cannot write {self.out} ({err.strerror or err}); the tracked frames are kept: "
                "run the same command again with --resume once the folder can be written"
            ) from err
        shutil.rmtree(self.folder, ignore_errors=True)
        self.close()

    def _move_onto_output(self) -> None:
        try:
            os.replace(self.labels_path, self.out)
            return
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
        # another file system: copy next to the output, then rename
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.{scratch.owner_tag()}-",
                                   suffix=".tmp", dir=self.out.parent)
        os.close(fd)
        scratch.register(tmp)
        try:
            shutil.copyfile(self.labels_path, tmp)
            os.replace(tmp, self.out)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            scratch.forget(tmp)

    def close(self) -> None:
        """Release the output (the run folder stays for ``--resume`` unless committed)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
