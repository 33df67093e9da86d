"""Lazy, normalised frames of a time-lapse or z-stack for SAM 2's video predictor.

:class:`FrameSource` wraps a stack -- numpy, ``np.memmap``, dask, zarr, a napari layer's
``.data``, any object with ``shape``/``dtype``/``__getitem__``, or a path (TIFF, folder of
images, ``.zarr``) -- and hands out one model-ready H×W×3 frame at a time. Nothing reads the
whole stack: opening reads at most the few frames sampled for the contrast limits, and
:meth:`FrameSource.read` reads exactly the requested frame.

Axes
----
* 3D: T×H×W (or Z×H×W); the frame axis is 0 unless ``frame_axis`` says otherwise.
* 4D T×H×W×C or T×C×H×W: the channel axis is guessed with the rules of
  :mod:`napari_sam2.core.stacks.normalization` (a small axis, <= 4) or given as ``channel_axis``
  (counted in the stack's axes).
* 4D T×Z×Y×X and anything of 5 or more dimensions: the caller names the followed axis
  (``frame_axis``) and where every other non-spatial axis stands (``position={axis:
  index}``, e.g. the current z-plane). An axis fixed by ``position`` may also be a channel axis
  (then one channel is followed, in grey).
* The spatial axes are always the last two non-channel axes.

Intensities
-----------
By default the contrast limits are resolved once for the whole stack from a bounded sample
of frames (:func:`~napari_sam2.core.stacks.stack_normalization.resolve_stack_normalization`),
so every frame is mapped identically; ``normalization=`` (e.g. another source's
:attr:`FrameSource.normalization`) or the keywords ``contrast_limits``, ``percentiles``,
``channels``, ``max_sample_frames`` override that.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from .frame_memory import check_frame_fits
from .layout import FrameLayout, resolve_layout
from .normalization import Normalization, _apply
from .readers import SequenceArray, open_path
from .stack_normalization import resolve_stack_normalization

__all__ = ["FrameReadError", "FrameSource", "frame_read_lock", "open_frames"]

_NORMALIZE_KWARGS = ("channels", "contrast_limits", "percentiles", "max_sample_frames")


class FrameReadError(RuntimeError):
    """A frame could not be read from the underlying source (file vanished, I/O error, ...).

    Attributes: ``index`` -- the frame index that failed.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _as_array_like(data: Any) -> Any:
    """``data`` as an object with ``shape``, ``dtype`` and ``__getitem__`` (never loaded)."""
    if type(data).__name__ == "MultiScaleData":  # napari multiscale layer: full resolution
        data = data[0]
    if isinstance(data, (list, tuple)):
        return SequenceArray(data)
    if all(hasattr(data, a) for a in ("shape", "dtype", "__getitem__")):
        return data
    raise TypeError(
        "data must be an array-like with shape, dtype and indexing (numpy, dask, zarr, "
        f"np.memmap, a napari layer's .data), a list of frames or a path; got {type(data).__name__}"
    )


class _FrameView:
    """Raw frames of the stack along the followed axis: shape (T, *raw_frame_shape)."""

    def __init__(
        self, data: Any, layout: FrameLayout, n_frames: int, name: str,
        folder: str | None = None,
    ) -> None:
        self.data, self.layout, self.name = data, layout, name
        self.shape = (n_frames, *layout.raw_frame_shape)
        self.dtype = np.dtype(data.dtype)
        # a zarr folder read chunk by chunk: a chunk that is not there reads as zeros (the
        # fill value), so a folder deleted or moved mid-run would give black frames
        self.folder = folder

    def __getitem__(self, index: int) -> np.ndarray:
        lay, data = self.layout, self.data
        if data is None:
            raise ValueError(f"cannot read from {self.name}: the FrameSource is closed")
        key = tuple(
            int(index) if a == lay.frame_axis else lay.position.get(a, slice(None))
            for a in range(len(data.shape))
        )
        try:
            frame = np.asarray(data[key])
        except Exception as exc:  # any back-end failure: I/O, vanished file, network...
            raise FrameReadError(
                f"could not read frame {index} of {self.name}: {type(exc).__name__}: {exc}", index
            ) from exc
        if self.folder is not None and not os.path.isdir(self.folder):
            raise FrameReadError(
                f"could not read frame {index} of {self.name}: the folder was removed or "
                "moved while it was being read", index,
            )
        if frame.shape != lay.raw_frame_shape:
            raise FrameReadError(
                f"frame {index} of {self.name} has shape {frame.shape}, expected "
                f"{lay.raw_frame_shape}", index,
            )
        return frame


class FrameSource:
    """Lazy, normalised access to the frames of a stack. Never loads the whole stack.

    Parameters
    ----------
    data:
        An array-like (numpy, ``np.memmap``, dask, zarr, a napari layer's ``.data``, anything
        with ``shape``/``dtype``/``__getitem__``), a list of equally shaped 2D frames, or a path
        (see :func:`open_frames`). Bool, integer or real float data.
    frame_axis:
        The axis followed through the stack (time, or z). Default 0.
    channel_axis:
        The stack's axis holding channels (e.g. -1 for T×H×W×C, 1 for T×C×H×W); ``None``
        guesses a small (<= 4) first or last axis of a frame, as :func:`normalize_image` does.
    position:
        ``{axis: index}`` for every axis that is neither followed, nor channels, nor spatial
        (e.g. ``{1: z}`` to follow time through plane ``z`` of a T×Z×Y×X stack).
    normalization:
        A :class:`Normalization` (settings, or a resolved record to reproduce earlier frames).
    normalize_kwargs:
        Instead of ``normalization``: ``contrast_limits`` (e.g. napari's layer limits),
        ``percentiles``, ``channels``, and ``max_sample_frames`` (frames sampled for the
        percentile limits, default 16).
    """

    def __init__(
        self, data: Any, *, frame_axis: int = 0, channel_axis: int | None = None,
        position: Mapping[int, int] | None = None, normalization: Normalization | None = None,
        **normalize_kwargs: Any,
    ) -> None:
        self._lock = threading.Lock()
        self._close_fn: Callable[[], None] | None = None
        self._closed = False
        unknown = set(normalize_kwargs) - set(_NORMALIZE_KWARGS)
        if unknown:
            raise TypeError(
                f"unexpected keyword arguments {sorted(unknown)}; normalisation accepts "
                f"{', '.join(_NORMALIZE_KWARGS)}"
            )
        if isinstance(data, FrameSource):
            raise TypeError("data is already a FrameSource; use open_frames(source) to pass it on")
        self._path: str | None = None
        if isinstance(data, (str, os.PathLike)):
            self._name = os.fspath(data)
            self._path = os.path.abspath(os.path.expanduser(self._name))
            data, self._close_fn = open_path(data)
        else:
            data = _as_array_like(data)
            self._name = f"{type(data).__name__} of shape {tuple(data.shape)}"
        try:
            self._setup(data, frame_axis, channel_axis, position, normalization, normalize_kwargs)
        except BaseException:
            self.close()
            raise

    def _setup(
        self, data: Any, frame_axis: Any, channel_axis: Any, position: Any,
        normalization: Normalization | None, kwargs: dict[str, Any],
    ) -> None:
        shape = tuple(int(s) for s in data.shape)
        self._shape = shape
        layout = resolve_layout(shape, np.dtype(data.dtype), frame_axis, channel_axis, position)
        n = shape[layout.frame_axis]
        if n == 0:
            raise ValueError(f"the stack has no frames along frame_axis={layout.frame_axis}")
        self._layout = layout
        check_frame_fits(layout.raw_frame_shape, data.dtype, "frame")  # before any read
        folder = self._path if self._path is not None and os.path.isdir(self._path) else None
        self._view = _FrameView(data, layout, n, self._name, folder)
        max_sample = kwargs.pop("max_sample_frames", 16)
        fca = layout.frame_channel_axis
        if normalization is not None:
            if kwargs:
                raise ValueError(
                    f"pass either normalization or {sorted(kwargs)}, not both"
                )
            if not isinstance(normalization, Normalization):
                raise ValueError(
                    f"normalization must be a Normalization, got {type(normalization).__name__}"
                )
            if not normalization.resolved and normalization.channel_axis is None:
                normalization = replace(normalization, channel_axis=fca)
            norm = resolve_stack_normalization(
                self._view, normalization, max_sample_frames=max_sample
            )
        else:
            norm = resolve_stack_normalization(
                self._view, channel_axis=fca, max_sample_frames=max_sample, **kwargs
            )
        if norm.channel_axis != fca:
            raise ValueError(
                f"the normalization expects channel axis {norm.channel_axis} within a frame, "
                f"but frames of this stack have shape {layout.raw_frame_shape} with channel "
                f"axis {fca}"
            )
        self._normalization = norm

    # -- description --------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """Number of frames along the followed axis."""
        return self._view.shape[0]

    def __len__(self) -> int:
        return self.num_frames

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one frame at the original resolution."""
        return self._layout.frame_shape

    @property
    def raw_frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame as :meth:`read_raw` returns it (``H×W``, or with channels)."""
        return tuple(self._layout.raw_frame_shape)

    @property
    def normalization(self) -> Normalization:
        """The resolved :class:`Normalization` (numeric limits recorded) used for every frame;
        pass it as ``normalization=`` to reproduce the same frames later."""
        return self._normalization

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the whole underlying stack."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the raw (un-normalised) data."""
        return self._view.dtype

    @property
    def frame_axis(self) -> int:
        return self._layout.frame_axis

    @property
    def channel_axis(self) -> int | None:
        """The stack's channel axis (non-negative), or ``None`` for grey frames."""
        return self._layout.channel_axis

    @property
    def position(self) -> dict[int, int]:
        """``{axis: index}`` of the fixed axes (non-negative)."""
        return dict(self._layout.position)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def name(self) -> str:
        """What the frames come from: the path, or a description of the array."""
        return self._name

    @property
    def path(self) -> str | None:
        """Absolute path of the file or folder the frames were opened from, or ``None``."""
        return self._path

    # -- reading ------------------------------------------------------------------------
    def _check_index(self, index: Any) -> int:
        if self._closed:
            raise ValueError(f"cannot read from {self._name}: the FrameSource is closed")
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {index!r}")
        n = self.num_frames
        if not 0 <= index < n:
            raise IndexError(
                f"frame index {index} is out of range: the stack has {n} frames (0..{n - 1})"
            )
        return int(index)

    def read_raw(self, index: int) -> np.ndarray:
        """Frame ``index`` as stored (un-normalised): H×W, or with the channel axis kept."""
        return self._view[self._check_index(index)]

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` ready for SAM 2: H×W×3, ``uint8`` (RGB pass-through) or ``float32``
        in [0, 1]. Reads only that frame; the result never shares memory with the source.

        Raises ``IndexError`` outside ``[0, num_frames)`` and :class:`FrameReadError` when the
        underlying source fails.
        """
        return self.normalize(self.read_raw(index))

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """A raw frame (as :meth:`read_raw` returns it) mapped as :meth:`read` maps it; never
        shares memory with ``raw`` unless ``raw`` owns its data."""
        out = _apply(self._normalization, raw, "frame")
        if out is raw and not out.flags.owndata:
            out = out.copy()
        return out

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Release file handles (TIFF, memory maps); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            close_fn, self._close_fn = self._close_fn, None
        if close_fn is not None:
            close_fn()
        if getattr(self, "_view", None) is not None:
            self._view.data = None  # drop the memory map / reader / array

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.num_frames} frames of {self.frame_shape}"
        return f"FrameSource({self._name}, {state})"


def open_frames(source: Any, **kwargs: Any) -> FrameSource:
    """A :class:`FrameSource` for ``source``; keyword arguments as for :class:`FrameSource`.

    ``source`` may be a :class:`FrameSource` (returned as is; then no keywords), an array-like
    (numpy, ``np.memmap``, dask, zarr, a napari layer's ``.data``, anything with
    ``shape``/``dtype``/``__getitem__``), a list of frames, or a path: a TIFF stack
    (memory-mapped when possible, else read page by page), a folder of ``.tif``/``.tiff``/
    ``.png``/``.jpg``/``.jpeg`` images (natural order: ``img2`` before ``img10``) or a
    ``.zarr`` store (needs ``zarr``).
    """
    if isinstance(source, FrameSource):
        if kwargs:
            raise ValueError(
                f"source is already a FrameSource; cannot apply {sorted(kwargs)} to it"
            )
        return source
    return FrameSource(source, **kwargs)


# One lock per frame source (kept as long as the source lives): readers such as tifffile
# handles are not thread-safe, and the pre-encoder reads frames from its own thread.
_READ_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_READ_LOCKS_GUARD = threading.Lock()


def frame_read_lock(frames: Any) -> threading.Lock:
    """The lock serialising reads of ``frames`` (created on first use)."""
    with _READ_LOCKS_GUARD:
        lock = _READ_LOCKS.get(frames)
        if lock is None:
            lock = _READ_LOCKS[frames] = threading.Lock()
        return lock
