"""Which axes of a stack are followed, hold channels, are fixed, or are spatial.

Used by :class:`napari_sam2.core.stacks.source.FrameSource`; the rules are documented there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .normalization import _guess_channel_axis

__all__ = ["FrameLayout", "resolve_layout"]


@dataclass(frozen=True)
class FrameLayout:
    """Where the frames of a stack lie: the followed axis, channels, fixed axes, frame shape."""

    frame_axis: int
    channel_axis: int | None  # in the stack's axes
    position: dict[int, int]
    frame_channel_axis: int | None  # within one raw frame (0, 1, 2) or None
    raw_frame_shape: tuple[int, ...]  # one frame as read: H×W, H×W×C, C×H×W (or H×C×W)
    frame_shape: tuple[int, int]


def _axis(value: Any, ndim: int, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer axis, got {value!r}")
    if not -ndim <= value < ndim:
        raise ValueError(f"{name}={value} is out of range for a {ndim}D array")
    return int(value) % ndim


def resolve_layout(
    shape: tuple[int, ...], dtype: np.dtype, frame_axis: Any, channel_axis: Any,
    position: Mapping[int, int] | None,
) -> FrameLayout:
    """Decide which axis is followed, which holds channels and where the others stand.

    ``frame_axis``, ``channel_axis`` and the keys of ``position`` are axes of ``shape``
    (negative allowed); raises ``ValueError`` naming ``frame_axis``/``position`` when the
    layout is ambiguous (4D T×Z×Y×X, 5D+) or the array is a single image (2D, H×W×C).
    """
    ndim = len(shape)
    if ndim == 2:
        raise ValueError(
            f"this is a single image (H×W); use SAM2ImagePredictor, or add a leading axis "
            f"(data[None]) to make a one-frame stack (got shape {shape})"
        )
    if ndim < 2:
        raise ValueError(f"a stack needs at least 3 dimensions (T×H×W), got shape {shape}")
    fa = _axis(frame_axis, ndim, "frame_axis")
    ca = None if channel_axis is None else _axis(channel_axis, ndim, "channel_axis")
    pos: dict[int, int] = {}
    for key, value in dict(position or {}).items():
        ax = _axis(key, ndim, "a position axis")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"position[{key}] must be an integer index, got {value!r}")
        if not -shape[ax] <= value < shape[ax]:
            raise ValueError(f"position[{key}]={value} is out of range for axis {ax} of size "
                             f"{shape[ax]}")
        if ax in pos:
            raise ValueError(f"position names axis {ax} twice")
        pos[ax] = int(value) % shape[ax]
    if fa in pos or (ca is not None and (ca == fa or ca in pos)):
        raise ValueError(
            f"frame_axis={fa}, channel_axis={ca} and position axes {sorted(pos)} must all "
            "be different axes"
        )

    free = [a for a in range(ndim) if a != fa and a not in pos]
    if ca is None and ndim == 3 and not pos and fa == 0 and shape[2] <= 4:
        try:  # H×W×C passed as a video?
            looks_rgb = _guess_channel_axis(shape, dtype, "image") == 2
        except ValueError:
            looks_rgb = False
        if looks_rgb:
            raise ValueError(
                f"this looks like a single H×W×C image (shape {shape}); use "
                "SAM2ImagePredictor, or add a leading axis (data[None]) for a one-frame stack"
            )
    if ca is None and len(free) == 3:
        try:
            guess = _guess_channel_axis(tuple(shape[a] for a in free), dtype, "frame")
        except ValueError:
            guess = None
        ca = None if guess is None else free[guess]
    nonchan = [a for a in range(ndim) if a != ca]
    spatial = nonchan[-2:]
    placed = set(spatial) | {fa} | set(pos)
    if ca is None and ndim == 4 and not pos and fa not in spatial and len(placed) < ndim:
        raise ValueError(
            f"this 4D array (shape {shape}) looks like T×Z×Y×X rather than T×H×W×C; pass "
            "frame_axis=... (the axis to follow) and position={...} (the index of the other "
            "axis, e.g. position={1: z}), or channel_axis=... if one axis holds channels"
        )
    if fa in spatial or any(a in spatial for a in pos):
        raise ValueError(
            f"frame_axis={fa} and position axes {sorted(pos)} must not be the spatial axes "
            f"{tuple(spatial)} (the last two non-channel axes) of the array of shape {shape}"
        )
    unplaced = [a for a in nonchan if a not in placed]
    if unplaced:
        raise ValueError(
            f"the {ndim}D array of shape {shape} has axes {unplaced} that are neither the "
            f"followed axis (frame_axis={fa}), channels (channel_axis={ca}) nor spatial; pass "
            "frame_axis=... and position={axis: index, ...} for every other non-spatial axis"
        )
    rest = [a for a in range(ndim) if a != fa and a not in pos]
    raw = tuple(shape[a] for a in rest)
    fca = None if ca is None else rest.index(ca)
    hw = (shape[spatial[0]], shape[spatial[1]])
    if min(hw) < 2:
        raise ValueError(f"frames must be at least 2×2 pixels, got {hw} from shape {shape}")
    return FrameLayout(fa, ca, pos, fca, raw, hw)
