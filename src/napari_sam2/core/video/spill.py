"""Fixed-size records of per-frame results in a temporary directory, read back bit-exactly.

Used by :class:`~napari_sam2.core.video.results.ResultStore`. A record holds the raw bytes of a
:class:`~napari_sam2.core.video.state.FrameOutput`'s tensors (bfloat16 included), so reading it
back gives identical tensors. Files are written and read with ordinary positional file I/O, not
memory maps: pages touched through a map count towards the process's resident memory until
the OS reclaims them, and a mapped file cannot be deleted on Windows while the map is open.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import numpy as np
import torch

from ..scratch import forget
from .frame_output import FrameOutput

__all__ = ["Layout", "SpillDirectory", "SpillFile", "layout_of"]

_FIELDS = ("pred_masks", "obj_ptr", "object_score_logits", "maskmem_features")
Layout = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]


def layout_of(out: FrameOutput) -> Layout:
    """Fields present in ``out``, widest dtype first (so every field is aligned in a record)."""
    fields = [
        (name, tuple(t.shape), t.dtype)
        for name in _FIELDS
        if (t := getattr(out, name)) is not None
    ]
    return tuple(sorted(fields, key=lambda f: -f[2].itemsize))


class SpillFile:
    """Fixed-size records of one layout in one file; freed records are reused."""

    def __init__(self, path: str, layout: Layout) -> None:
        self.layout = layout
        self.nbytes = [int(np.prod(shape)) * dtype.itemsize for _, shape, dtype in layout]
        self.record_nbytes = sum(self.nbytes)
        self.file = open(path, "w+b")
        self.num_records = 0
        self.free: list[int] = []

    def write(self, out: FrameOutput, slot: int | None) -> int:
        if slot is None:
            slot = self.free.pop() if self.free else self.num_records
            self.num_records = max(self.num_records, slot + 1)
        chunks = []
        for name, _, _ in self.layout:
            t = getattr(out, name).detach().to("cpu").contiguous()
            chunks.append(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        self.file.seek(slot * self.record_nbytes)
        self.file.write(b"".join(chunks))
        self.file.flush()  # a full disk fails here, not at a later read of a short record
        return slot

    def read(self, slot: int) -> dict[str, torch.Tensor]:
        self.file.seek(slot * self.record_nbytes)
        raw = bytearray(self.file.read(self.record_nbytes))
        if len(raw) != self.record_nbytes:
            raise OSError(f"spill file {self.file.name} is truncated (record {slot})")
        buf = torch.frombuffer(raw, dtype=torch.uint8)
        out, offset = {}, 0
        for (name, shape, dtype), n in zip(self.layout, self.nbytes):
            out[name] = buf[offset : offset + n].view(dtype).reshape(shape)
            offset += n
        return out


@dataclass(eq=False)
class SpillDirectory:
    """The temporary directory and its open files (shared with the finalizer)."""

    directory: str
    files: dict[Layout, SpillFile] = field(default_factory=dict)

    def close(self) -> None:
        for f in self.files.values():
            f.file.close()
        self.files.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        forget(self.directory)
