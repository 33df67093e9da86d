"""Whether one frame can be prepared for the model in this machine's memory, asked before
anything is read or allocated.

Preparing a frame holds, at its full resolution, the raw frame as read and its ``H×W×3``
float32 scaling (12 bytes a pixel; 24 with the float64 work copy of wide integers and
doubles), before it is resized to the model's input. A 40,000 × 40,000 slide at 16 bits needs
about 29 GB for that: refused with the size, rather than swapping the machine to a halt or
being killed by the system with the user's work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FrameTooLargeError", "available_memory", "check_frame_fits", "frame_bytes"]


class FrameTooLargeError(MemoryError):
    """A frame that would not fit in memory while it is prepared for the model."""


def frame_bytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes held at the peak of preparing one frame of ``shape`` (``H×W`` or with channels)
    and ``dtype``: the raw frame, its ``H×W×3`` scaling and the work copy of one channel."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    pixels = math.prod(sorted(shape, reverse=True)[:2])  # H×W: a channel axis is the shortest
    wide = (dtype.kind in "iu" and dtype.itemsize >= 4) or dtype == np.float64
    work = 8 if wide else 4
    return math.prod(shape) * dtype.itemsize + pixels * (3 * 4 + work)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (``None`` if unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported: ask the system
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_frame_fits(shape: Sequence[int], dtype: Any, name: str = "frame") -> None:
    """Raise :class:`FrameTooLargeError` if preparing one frame would not fit in the memory
    available now, saying how much it needs and what to do."""
    need = frame_bytes(shape, dtype)
    free = available_memory()
    if free is None or need <= free:
        return
    size = "×".join(str(int(s)) for s in shape)
    raise FrameTooLargeError(
        f"a {name} of {size} ({np.dtype(dtype)}) needs about {need / 1e9:.1f} GB to be read "
        f"and scaled for the model, and this machine has {free / 1e9:.1f} GB free. Crop it, "
        "or downsample it (e.g. data[..., ::4, ::4]; SAM 2 sees every frame at 1024 pixels "
        "at most), then try again."
    )
