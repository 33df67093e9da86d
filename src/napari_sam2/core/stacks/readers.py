"""Lazy array-likes over image files, the path back-ends of :mod:`napari_sam2.core.stacks.source`.

Every reader here exposes ``shape``, ``dtype``, ``__getitem__`` (numpy-style keys) and
``close()``, and reads only the pixels a key asks for -- never the whole stack:

* :class:`TiffPagesArray` -- a TIFF series that cannot be memory-mapped (compressed, tiled),
  read page by page through ``tifffile.TiffFile``;
* :class:`ImageFolderArray` -- a folder of 2D images (``.tif``, ``.tiff``, ``.png``, ``.jpg``,
  ``.jpeg``), one file per frame, in natural order (``img2`` before ``img10``);
* :class:`SequenceArray` -- a list of equally shaped 2D arrays seen as one stack;
* :func:`open_path` -- picks the right reader (or ``tifffile.memmap`` / ``zarr.open``) for a path.

Reading is serialised by a lock per reader, so frames may be requested from several threads.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolderArray",
    "SequenceArray",
    "TiffPagesArray",
    "natural_sort_key",
    "open_path",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff")


def natural_sort_key(name: str) -> tuple[Any, ...]:
    """Sort key putting ``img2`` before ``img10`` (digit runs compare as numbers, case ignored)."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


def _normalize_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """``key`` as a tuple of exactly ``ndim`` ints/slices (Ellipsis expanded)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices ({len(key)}) for an array with {ndim} dimensions")
    key = key + (slice(None),) * (ndim - len(key))
    for k in key:
        if not isinstance(k, (slice, int, np.integer)) or isinstance(k, (bool, np.bool_)):
            raise IndexError(f"only integers and slices are supported as indices, got {k!r}")
    return key


def _take_leading(
    key: tuple[Any, ...], lead_shape: tuple[int, ...], read: Callable[[tuple[int, ...]], np.ndarray]
) -> np.ndarray:
    """Apply ``key`` to an array whose leading ``lead_shape`` axes are read item by item.

    ``read(index_tuple)`` returns the trailing block (one page / one file) for one combination
    of leading indices; only the combinations selected by ``key`` are read.
    """
    n_lead = len(lead_shape)
    ranges: list[Sequence[int]] = []
    for k, size in zip(key[:n_lead], lead_shape):
        if isinstance(k, slice):
            ranges.append(range(*k.indices(size)))
        else:
            k = int(k)
            if not -size <= k < size:
                raise IndexError(f"index {k} is out of bounds for an axis of size {size}")
            ranges.append([k % size])
    rest = key[n_lead:]
    blocks = [
        np.asarray(read(tuple(r[i] for r, i in zip(ranges, pos))))[rest]
        for pos in np.ndindex(*(len(r) for r in ranges))
    ]
    if not blocks:
        raise IndexError(f"the key {key} selects no data")
    out_lead = tuple(len(r) for r, k in zip(ranges, key[:n_lead]) if isinstance(k, slice))
    if len(blocks) == 1:
        return blocks[0].reshape(out_lead + blocks[0].shape)
    return np.stack(blocks).reshape(out_lead + blocks[0].shape)


class TiffPagesArray:
    """A TIFF series read lazily page by page: ``shape`` is the series' shape, pages cover the
    trailing axes (e.g. T×H×W -> T pages of H×W). Used when ``tifffile.memmap`` is impossible."""

    def __init__(self, path: str | os.PathLike[str], series: int = 0) -> None:
        import tifffile

        self.path = Path(path)
        self._lock = threading.Lock()
        self._tif: Any = tifffile.TiffFile(self.path)
        try:
            s = self._tif.series[series]
            self.shape: tuple[int, ...] = tuple(int(v) for v in s.shape)
            self.dtype = np.dtype(s.dtype)
            page_shape = tuple(int(v) for v in s.keyframe.shape)
            n_lead = len(self.shape) - len(page_shape)
            if n_lead < 0 or self.shape[n_lead:] != page_shape or math.prod(
                self.shape[:n_lead]
            ) != len(s):
                raise ValueError(
                    f"cannot read {self.path} page by page: series shape {self.shape} does not "
                    f"split into {len(s)} pages of shape {page_shape}"
                )
        except BaseException:
            self._tif.close()
            raise
        self._series = series
        self._lead = self.shape[:n_lead]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read_page(self, idx: tuple[int, ...]) -> np.ndarray:
        page = int(np.ravel_multi_index(idx, self._lead)) if self._lead else 0
        with self._lock:
            if self._tif is None:
                raise ValueError(f"{self.path} was closed")
            return self._tif.asarray(key=page, series=self._series)

    def __getitem__(self, key: Any) -> np.ndarray:
        return _take_leading(_normalize_key(key, self.ndim), self._lead, self._read_page)

    def close(self) -> None:
        with self._lock:
            if self._tif is not None:
                self._tif.close()
                self._tif = None

    def __repr__(self) -> str:
        return f"TiffPagesArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def _read_image_file(path: Path) -> np.ndarray:
    """One 2D image (H×W or H×W×C) from a file; RGBA PNG/JPEG lose their alpha channel."""
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        return np.asarray(tifffile.imread(path, key=0))
    try:
        import imageio.v3 as iio

        image = np.asarray(iio.imread(path))
    except ImportError:  # pragma: no cover - imageio comes with napari
        from PIL import Image

        with Image.open(path) as im:
            image = np.asarray(im)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    return image


class ImageFolderArray:
    """Files of one folder as a stack F×H×W (or F×H×W×C), one file read per frame.

    The first file fixes the frame shape and dtype; a later file that differs, or that can no
    longer be read (deleted, truncated), raises when its frame is requested.
    """

    def __init__(self, folder: str | os.PathLike[str], files: Sequence[Path] | None = None) -> None:
        self.path = Path(folder)
        if files is None:
            files = sorted(
                (p for p in self.path.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.startswith(".")),
                key=lambda p: natural_sort_key(p.name),
            )
        self.files: tuple[Path, ...] = tuple(files)
        if not self.files:
            raise ValueError(
                f"folder {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        first = _read_image_file(self.files[0])
        if first.ndim not in (2, 3):
            raise ValueError(
                f"{self.files[0]} holds a {first.ndim}D image of shape {first.shape}; a folder "
                "must hold one 2D image (H×W or H×W×C) per file"
            )
        self._frame_shape = tuple(int(v) for v in first.shape)
        self.dtype = np.dtype(first.dtype)
        self.shape: tuple[int, ...] = (len(self.files), *self._frame_shape)
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read_file(self, idx: tuple[int, ...]) -> np.ndarray:
        path = self.files[idx[0]]
        with self._lock:
            image = _read_image_file(path)
        if image.shape != self._frame_shape or image.dtype != self.dtype:
            raise ValueError(
                f"{path.name} has shape {image.shape} and dtype {image.dtype}, but the folder's "
                f"first image {self.files[0].name} has shape {self._frame_shape} and dtype "
                f"{self.dtype}; all images must match"
            )
        return image

    def __getitem__(self, key: Any) -> np.ndarray:
        return _take_leading(_normalize_key(key, self.ndim), self.shape[:1], self._read_file)

    def close(self) -> None:
        """Nothing stays open between reads; kept for a uniform interface."""

    def __repr__(self) -> str:
        return f"ImageFolderArray({str(self.path)!r}, {len(self.files)} files)"


class SequenceArray:
    """A list of equally shaped arrays (e.g. 2D frames) seen lazily as one stack N×..."""

    def __init__(self, items: Sequence[Any]) -> None:
        items = list(items)
        if not items:
            raise ValueError("the list of frames is empty")
        arrays = [it if hasattr(it, "shape") and hasattr(it, "dtype") else np.asarray(it)
                  for it in items]
        shapes = {tuple(int(v) for v in a.shape) for a in arrays}
        dtypes = {np.dtype(a.dtype) for a in arrays}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(
                "a list of frames needs one shape and dtype for all items, got shapes "
                f"{sorted(shapes)} and dtypes {sorted(map(str, dtypes))} (for a multiscale "
                "pyramid pass its first, full-resolution level)"
            )
        self._items = arrays
        self.dtype = dtypes.pop()
        self.shape: tuple[int, ...] = (len(arrays), *shapes.pop())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return _take_leading(
            _normalize_key(key, self.ndim), self.shape[:1], lambda idx: self._items[idx[0]]
        )


def open_path(path: str | os.PathLike[str]) -> tuple[Any, Callable[[], None]]:
    """Open a stack stored at ``path`` lazily; returns ``(array_like, close)``.

    * ``.tif``/``.tiff`` file: ``tifffile.memmap`` (read-only) when the data are contiguous and
      uncompressed, else :class:`TiffPagesArray` (page by page);
    * a folder ending in ``.zarr`` (or holding ``.zarray``/``.zgroup``/``zarr.json``):
      ``zarr.open(path, mode="r")`` -- for a group, its array ``"0"`` (OME-Zarr full
      resolution) or its only array;
    * any other folder: :class:`ImageFolderArray`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        markers = (".zarray", ".zgroup", "zarr.json")
        if p.suffix.lower() == ".zarr" or any((p / m).exists() for m in markers):
            return _open_zarr(p), lambda: None
        folder = ImageFolderArray(p)
        return folder, folder.close
    suffix = p.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        import tifffile

        try:
            mm: Any = tifffile.memmap(p, mode="r")
        except ValueError:  # compressed, tiled or otherwise not contiguous
            tiff = TiffPagesArray(p)
            return tiff, tiff.close
        holder = [mm]
        return mm, holder.clear  # dropping the last reference unmaps the file
    if suffix in IMAGE_SUFFIXES:
        raise ValueError(
            f"{p} is a single 2D image; use SAM2ImagePredictor, or pass the folder holding "
            "one image per frame"
        )
    raise ValueError(
        f"cannot open {p} as a stack: expected a .tif/.tiff file, a .zarr folder or a folder of "
        f"images ({', '.join(IMAGE_SUFFIXES)})"
    )


def _open_zarr(path: Path) -> Any:
    try:
        import zarr
    except ImportError:
        raise ImportError(
            f"reading {path} needs the zarr package: pip install zarr"
        ) from None
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape") and hasattr(node, "dtype"):
        return node
    arrays = dict(node.arrays())
    if "0" in arrays:
        return arrays["0"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ValueError(
        f"zarr group {path} holds {len(arrays)} arrays ({sorted(arrays)}); open the one to "
        "follow, e.g. zarr.open(path)['name'], and pass that array"
    )
