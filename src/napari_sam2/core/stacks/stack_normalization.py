"""Frames for SAM 2 from 2D images and from stacks (time-lapses T×H×W[×C], z-stacks Z×H×W).

A stack is normalised lazily, one frame at a time, but with the *same* contrast limits for
every frame: :func:`resolve_stack_normalization` computes them once from a bounded,
deterministic sample of evenly spaced frames, and :func:`normalize_frame` reads and maps one
frame with them. Stacks may be any array-like with ``shape``, ``dtype`` and integer indexing
on the first axis (numpy, ``np.memmap``, dask, zarr); only the sampled frames (and, in
:func:`normalize_frame`, the requested frame) are ever read -- never the whole array.

The intensity mapping itself lives in :mod:`napari_sam2.core.stacks.normalization`; its public names
are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .normalization import (
    DEFAULT_PERCENTILES,
    Normalization,
    _apply,
    _channel,
    _resolve,
    _settings,
    normalize_image,
)

__all__ = [
    "DEFAULT_PERCENTILES",
    "Normalization",
    "normalize_frame",
    "normalize_image",
    "resolve_stack_normalization",
    "sample_frame_indices",
]

#: Pixels per frame and channel that enter the stack percentiles (strided subsample above it).
MAX_SAMPLE_PIXELS_PER_FRAME = 1 << 20


def sample_frame_indices(n_frames: int, max_sample_frames: int = 16) -> tuple[int, ...]:
    """Evenly spaced frame indices, first and last included, at most ``max_sample_frames``.

    Deterministic: ``sample_frame_indices(100, 4) == (0, 33, 66, 99)``.
    """
    if isinstance(max_sample_frames, bool) or not isinstance(max_sample_frames, (int, np.integer)):
        raise ValueError(f"max_sample_frames must be a positive integer, got {max_sample_frames!r}")
    if max_sample_frames < 1:
        raise ValueError(f"max_sample_frames must be a positive integer, got {max_sample_frames}")
    n_frames = int(n_frames)
    if n_frames <= max_sample_frames:
        return tuple(range(n_frames))
    if max_sample_frames == 1:
        return (0,)
    last, k = n_frames - 1, max_sample_frames - 1  # round(i * last / k) in exact integers
    return tuple((2 * i * last + k) // (2 * k) for i in range(max_sample_frames))


def resolve_stack_normalization(
    stack: Any,
    normalization: Normalization | None = None,
    *,
    channel_axis: int | None = None,
    channels: int | Sequence[int] | None = None,
    contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_sample_frames: int = 16,
) -> Normalization:
    """Resolve one :class:`Normalization` for every frame of ``stack``.

    Parameters
    ----------
    stack:
        T×H×W (or Z×H×W) grey, or T×H×W×C / T×C×H×W multichannel, of any real dtype; axis 0
        indexes frames. Array-likes (dask, zarr, ``np.memmap``) are read frame by frame.
    normalization, channel_axis, channels, contrast_limits, percentiles:
        As in :func:`normalize_image`, with ``channel_axis`` counted within one frame
        (``-1`` for T×H×W×C, ``0`` for T×C×H×W).
    max_sample_frames:
        Percentile limits are computed over at most this many evenly spaced frames
        (:func:`sample_frame_indices`), pooled per channel; frames larger than
        ``MAX_SAMPLE_PIXELS_PER_FRAME`` pixels contribute a strided subsample. With explicit
        ``contrast_limits`` or RGB ``uint8`` pass-through no frame is read at all.

    Returns
    -------
    The resolved :class:`Normalization`, to be used with :func:`normalize_frame`.
    """
    normalization = _settings(normalization, channel_axis, channels, contrast_limits, percentiles)
    shape, dtype = _stack_shape_dtype(stack)
    indices = sample_frame_indices(shape[0], max_sample_frames)

    def sample(axis: int | None, chans: tuple[int, ...]) -> list[np.ndarray]:
        pooled: list[list[np.ndarray]] = [[] for _ in chans]
        for i in indices:
            frame = np.asarray(stack[i])
            for k, c in enumerate(chans):
                values = _channel(frame, axis, c).ravel()
                stride = math.ceil(values.size / MAX_SAMPLE_PIXELS_PER_FRAME)
                pooled[k].append(values[::stride] if stride > 1 else values)
        return [np.concatenate(p) for p in pooled]

    return _resolve(normalization, shape[1:], dtype, sample, "stack")


def normalize_frame(stack: Any, index: int, normalization: Normalization) -> np.ndarray:
    """Read frame ``index`` of ``stack`` (only that frame) and map it with a resolved record.

    Returns H×W×3: ``float32`` in [0, 1], or for RGB ``uint8`` pass-through the frame's own
    ``uint8`` values. ``normalization`` must come from :func:`resolve_stack_normalization` (or
    be otherwise resolved), so that every frame gets the same limits.
    """
    if not isinstance(normalization, Normalization) or not normalization.resolved:
        raise ValueError(
            "normalization must be resolved for the whole stack first: "
            "normalization = resolve_stack_normalization(stack)"
        )
    shape, _ = _stack_shape_dtype(stack)
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise ValueError(f"index must be an integer frame index, got {index!r}")
    n = shape[0]
    if not -n <= index < n:
        raise IndexError(f"index {index} is out of range for a stack of {n} frames")
    return _apply(normalization, np.asarray(stack[int(index) % n]), "stack frame")


def _stack_shape_dtype(stack: Any) -> tuple[tuple[int, ...], np.dtype]:
    if not (hasattr(stack, "shape") and hasattr(stack, "dtype")):
        raise ValueError(
            "stack must be an array-like with shape and dtype (numpy, dask, zarr, np.memmap), "
            f"got {type(stack).__name__}"
        )
    shape = tuple(int(s) for s in stack.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"stack must be T×H×W or T×H×W×C (frames on axis 0); got {len(shape)}D shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError(f"stack has no frames (shape {shape})")
    return shape, np.dtype(stack.dtype)
