"""Per-object, per-frame tracking results with bounded RAM: a window in memory, the rest on disk.

SAM 2 keeps, for every tracked frame and object, the memory features, object pointer,
presence score and low-resolution mask logits (about 0.77 MiB at image size 1024); later frames
read the recent ones, and a correction click may read any of them. :class:`ResultStore` keeps
in RAM

* every *conditioning* (prompted) frame's result -- every later frame reads them -- and
* per object, the ``ram_window`` most recently used other results (LRU),

and writes the rest, byte for byte, to files in a private temporary directory. Reading one
back gives bit-identical tensors (bfloat16 included: raw bytes are stored), so results do not
depend on what was spilled. The memory position encoding, the same for every frame, is kept
once (:attr:`ResultStore.maskmem_pos_enc`) and attached to results as they are read.

Records are written with ordinary file I/O (see :mod:`napari_sam2.core.video.spill`). The
directory is created at the first spill and removed by :meth:`ResultStore.clear` /
:meth:`ResultStore.close`, or by a ``weakref.finalize`` safety net when the store is collected.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import scratch
from .frame_output import FrameOutput
from .spill import Layout, SpillDirectory, SpillFile, layout_of

__all__ = ["ResultStore", "MemoryBankView"]


@dataclass(eq=False)
class _ObjectFrames:
    """One object's results: conditioning frames pinned in RAM, the others in an LRU window
    or on disk (``slot``/``layout_of`` say where; ``dirty`` frames are newer than on disk)."""

    num_frames: int
    cond: dict[int, FrameOutput] = field(default_factory=dict)
    ram: OrderedDict[int, FrameOutput] = field(default_factory=OrderedDict)
    dirty: set[int] = field(default_factory=set)
    present: np.ndarray = field(init=False)  # a non-conditioning result exists
    slot: np.ndarray = field(init=False)  # its record on disk, or -1
    layout_of: list[Layout | None] = field(init=False)

    def __post_init__(self) -> None:
        self.present = np.zeros(self.num_frames, dtype=bool)
        self.slot = np.full(self.num_frames, -1, dtype=np.int64)
        self.layout_of = [None] * self.num_frames


class ResultStore:
    """Results of every object on every frame, at most ``ram_window`` non-conditioning ones per
    object in RAM (plus all conditioning ones), the rest spilled to disk.

    Args:
        num_frames: frames of the stack.
        ram_window: non-conditioning results kept in RAM per object (most recently used); must
            be at least the number of past frames the model reads (``num_maskmem``,
            ``max_obj_ptrs_in_encoder``) for tracking to never read the disk.
        storage_device: where results in RAM live.
        spill_dir: parent of the temporary directory (default: the system's temp directory).
    """

    def __init__(
        self,
        num_frames: int,
        ram_window: int = 17,
        storage_device: torch.device | str = "cpu",
        spill_dir: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(ram_window, bool) or not isinstance(ram_window, int) or ram_window < 1:
            raise ValueError(f"ram_window must be a positive integer, got {ram_window!r}.")
        self.num_frames = int(num_frames)
        self.ram_window = ram_window
        self.storage_device = torch.device(storage_device)
        self.spill_dir = None if spill_dir is None else os.fspath(spill_dir)
        self.maskmem_pos_enc: list[torch.Tensor] | None = None
        self._objects: dict[Hashable, _ObjectFrames] = {}
        self._disk: SpillDirectory | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.RLock()
        self.spill_writes = 0
        self.spill_reads = 0

    # ------------------------------------------------------------------ objects
    def add_object(self, key: Hashable) -> None:
        with self._lock:
            if key in self._objects:
                raise KeyError(f"object key {key!r} is already in the store.")
            self._objects[key] = _ObjectFrames(self.num_frames)

    def remove_object(self, key: Hashable) -> None:
        with self._lock:
            frames = self._objects.pop(key)
            for t in np.flatnonzero(frames.slot >= 0):
                self._disk.files[frames.layout_of[t]].free.append(int(frames.slot[t]))

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    # ------------------------------------------------------------------ results
    def put(self, key: Hashable, frame_idx: int, out: FrameOutput, *, cond: bool) -> None:
        """Store ``out`` as the object's (conditioning or ordinary) result on ``frame_idx``,
        replacing any earlier result of either kind there."""
        with self._lock:
            frames = self._objects[key]
            if self.maskmem_pos_enc is None and out.maskmem_pos_enc is not None:
                self.maskmem_pos_enc = out.maskmem_pos_enc
            if cond:
                self._drop_non_cond(frames, frame_idx)
                frames.cond[frame_idx] = out
                return
            frames.cond.pop(frame_idx, None)
            frames.present[frame_idx] = True
            frames.ram[frame_idx] = out
            frames.ram.move_to_end(frame_idx)
            frames.dirty.add(frame_idx)
            self._evict(frames)

    def get(self, key: Hashable, frame_idx: int) -> FrameOutput | None:
        """The object's result on ``frame_idx`` (conditioning or not), or ``None``."""
        with self._lock:
            frames = self._objects[key]
            out = frames.cond.get(frame_idx)
            return out if out is not None else self._get_non_cond(frames, frame_idx)

    def is_cond(self, key: Hashable, frame_idx: int) -> bool:
        """Whether ``frame_idx`` is a conditioning frame of the object."""
        return frame_idx in self._objects[key].cond

    def cond_outputs(self, key: Hashable) -> dict[int, FrameOutput]:
        """The object's conditioning results, in the order they were first stored."""
        with self._lock:
            return dict(self._objects[key].cond)

    def non_cond_frames(self, key: Hashable) -> list[int]:
        return np.flatnonzero(self._objects[key].present).tolist()

    def downgrade(self, key: Hashable, frame_idx: int) -> bool:
        """Turn a conditioning result into an ordinary one; ``False`` if there was none."""
        with self._lock:
            out = self._objects[key].cond.pop(frame_idx, None)
            if out is None:
                return False
            self.put(key, frame_idx, out, cond=False)
            return True

    def pop(self, key: Hashable, frame_idx: int) -> None:
        """Forget the object's result on ``frame_idx`` (either kind)."""
        with self._lock:
            frames = self._objects[key]
            frames.cond.pop(frame_idx, None)
            self._drop_non_cond(frames, frame_idx)

    def shared_pos_enc(self, pos_enc: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """The one stored copy of the memory position encoding (batch of 1), taken from
        ``pos_enc`` the first time; ``None`` for ``None``."""
        if pos_enc is None:
            return None
        with self._lock:
            if self.maskmem_pos_enc is None:
                self.maskmem_pos_enc = [
                    x[0:1].clone().to(self.storage_device) for x in pos_enc
                ]
            return self.maskmem_pos_enc

    def memory_bank(self, key: Hashable) -> dict[str, Mapping[int, FrameOutput]]:
        """The object's results as the ``output_dict`` that ``SAM2Base.track_step`` reads."""
        return {
            "cond_frame_outputs": self.cond_outputs(key),
            "non_cond_frame_outputs": MemoryBankView(self, key),
        }

    # ------------------------------------------------------------------ accounting
    def in_memory_count(self) -> int:
        """Results held in RAM (all objects, conditioning ones included)."""
        with self._lock:
            return sum(len(f.cond) + len(f.ram) for f in self._objects.values())

    def spilled_count(self) -> int:
        """Results whose only copy is on disk."""
        with self._lock:
            return sum(
                int(f.present.sum()) - len(f.ram) for f in self._objects.values()
            )

    @property
    def directory(self) -> str | None:
        """The temporary directory of spilled results (``None`` until something is spilled)."""
        return None if self._disk is None else self._disk.directory

    def disk_bytes(self) -> int:
        with self._lock:
            if self._disk is None:
                return 0
            return sum(f.num_records * f.record_nbytes for f in self._disk.files.values())

    # ------------------------------------------------------------------ lifetime
    def clear(self) -> None:
        """Forget every object and result and delete the temporary directory."""
        with self._lock:
            self._objects.clear()
            self.maskmem_pos_enc = None
            if self._finalizer is not None:
                self._finalizer()  # closes the files, removes the directory
            self._disk = self._finalizer = None

    close = clear

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _get_non_cond(self, frames: _ObjectFrames, t: int) -> FrameOutput | None:
        if not 0 <= t < self.num_frames or not frames.present[t]:
            return None
        out = frames.ram.get(t)
        if out is not None:
            frames.ram.move_to_end(t)
            return out
        tensors = self._disk.files[frames.layout_of[t]].read(int(frames.slot[t]))
        self.spill_reads += 1
        tensors = {k: v.to(self.storage_device) for k, v in tensors.items()}
        has_mem = "maskmem_features" in tensors
        out = FrameOutput(
            **tensors, maskmem_pos_enc=self.maskmem_pos_enc if has_mem else None
        )
        frames.ram[t] = out  # clean: the disk copy is identical
        self._evict(frames)
        return out

    def _drop_non_cond(self, frames: _ObjectFrames, t: int) -> None:
        if not frames.present[t]:
            return
        frames.present[t] = False
        frames.ram.pop(t, None)
        frames.dirty.discard(t)
        if frames.slot[t] >= 0:
            self._disk.files[frames.layout_of[t]].free.append(int(frames.slot[t]))
            frames.slot[t] = -1
            frames.layout_of[t] = None

    def _evict(self, frames: _ObjectFrames) -> None:
        while len(frames.ram) > self.ram_window:
            t, out = frames.ram.popitem(last=False)
            if t in frames.dirty:
                self._spill(frames, t, out)
                frames.dirty.discard(t)

    def _spill(self, frames: _ObjectFrames, t: int, out: FrameOutput) -> None:
        disk = self._ensure_disk()
        layout = layout_of(out)
        if frames.slot[t] >= 0 and frames.layout_of[t] != layout:  # layout changed: new record
            disk.files[frames.layout_of[t]].free.append(int(frames.slot[t]))
            frames.slot[t] = -1
        spill = disk.files.get(layout)
        if spill is None:
            path = os.path.join(disk.directory, f"results_{len(disk.files)}.bin")
            spill = disk.files[layout] = SpillFile(path, layout)
        slot = None if frames.slot[t] < 0 else int(frames.slot[t])
        try:
            frames.slot[t] = spill.write(out, slot)
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot keep tracking results on disk in {disk.directory} "
                f"({err.strerror or err}); free some space there, or point spill_dir (or "
                "the TMPDIR environment variable) to another disk",
            ) from err
        frames.layout_of[t] = layout
        self.spill_writes += 1

    def _ensure_disk(self) -> SpillDirectory:
        if self._disk is None:
            # named by this process, so that a later one removes it if this one is killed
            prefix = f"{scratch.PREFIX}{scratch.owner_tag()}-"
            try:
                directory = tempfile.mkdtemp(prefix=prefix, dir=self.spill_dir)
            except OSError as err:  # a read-only or missing folder, a full disk
                where = self.spill_dir or tempfile.gettempdir()
                raise OSError(
                    err.errno,
                    f"cannot keep tracking results on disk in {where} ({err.strerror or err}); "
                    "point spill_dir (or the TMPDIR environment variable) to a folder you can "
                    "write, with free space",
                ) from err
            disk = SpillDirectory(directory)
            scratch.register(disk.directory)
            self._disk = disk
            self._finalizer = weakref.finalize(self, disk.close)
        return self._disk


class MemoryBankView(Mapping[int, FrameOutput]):
    """Read-only mapping ``frame -> non-conditioning result`` of one object, read lazily from
    the store (only the frames the model asks for are loaded)."""

    def __init__(self, store: ResultStore, key: Hashable) -> None:
        self._store, self._key = store, key

    def __getitem__(self, frame_idx: int) -> FrameOutput:
        frames = self._store._objects[self._key]
        if not isinstance(frame_idx, (int, np.integer)) or frame_idx in frames.cond:
            raise KeyError(frame_idx)
        out = self._store.get(self._key, int(frame_idx))
        if out is None:
            raise KeyError(frame_idx)
        return out

    def get(self, frame_idx: int, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[frame_idx]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[int]:
        return iter(self._store.non_cond_frames(self._key))

    def __len__(self) -> int:
        return len(self._store.non_cond_frames(self._key))

    def __contains__(self, frame_idx: object) -> bool:
        frames = self._store._objects[self._key]
        return isinstance(frame_idx, (int, np.integer)) and 0 <= frame_idx < len(
            frames.present
        ) and bool(frames.present[frame_idx])
