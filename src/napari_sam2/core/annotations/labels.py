"""Integer label images from masks (e.g. the records of automatic mask generation).

Rule used by :func:`masks_to_labels`
------------------------------------
Masks are ranked by decreasing area (ties keep their input order) and get the labels
``1..N`` in that order: label 1 is the largest mask. They are painted largest first, each
smaller one over the larger ones, so every pixel carries exactly one label (0 = background)
and small objects lying on or inside larger ones stay visible. A mask fully covered by
smaller masks (or an empty mask) keeps its label number but no pixel shows it, so label
``k`` always means "the k-th largest mask" and never two masks share a label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..image.rle import rle_to_mask

__all__ = ["label_dtype", "masks_to_labels", "record_mask"]


def label_dtype(n_labels: int) -> np.dtype:
    """Smallest of ``uint16`` / ``uint32`` / ``uint64`` that holds labels ``0..n_labels``."""
    if n_labels < 0:
        raise ValueError(f"n_labels must be >= 0, got {n_labels}")
    for dtype in (np.uint16, np.uint32):
        if n_labels <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def record_mask(record: Mapping[str, Any] | np.ndarray) -> np.ndarray:
    """The ``H×W`` bool mask of a record or mask.

    Accepts a mask generator record (its ``"segmentation"`` being an ``H×W`` array, an
    uncompressed RLE or a COCO RLE with string counts), a bare RLE dict (``"size"`` and
    ``"counts"``) or an ``H×W`` array (non-zero = foreground).
    """
    if isinstance(record, Mapping):
        if "segmentation" in record:
            seg = record["segmentation"]
        elif "counts" in record and "size" in record:
            seg = record
        else:
            raise ValueError("a record needs a 'segmentation' (mask or RLE) or RLE 'size'/'counts'")
        if isinstance(seg, Mapping):
            return rle_to_mask(dict(seg))
        record = seg
    mask = np.asarray(record)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be H×W, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def masks_to_labels(
    records: Sequence[Mapping[str, Any] | np.ndarray], shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Paint masks into one ``H×W`` label image; see the module docstring for the rule.

    Args:
        records: mask generator records, RLE dicts or ``H×W`` masks (see :func:`record_mask`),
            all of the same shape.
        shape: ``(H, W)`` of the output; required when ``records`` is empty, otherwise checked
            against the masks.

    Returns:
        ``H×W`` labels, 0 = background and ``k`` = the k-th largest mask, as ``uint16`` (or
        ``uint32`` above 65535 masks).
    """
    masks = [record_mask(r) for r in records]
    if shape is None:
        if not masks:
            raise ValueError("masks_to_labels needs shape=(H, W) when there are no masks")
        shape = masks[0].shape
    shape = (int(shape[0]), int(shape[1]))
    for i, mask in enumerate(masks):
        if mask.shape != shape:
            raise ValueError(f"mask {i} has shape {mask.shape}, expected {shape}")
    labels = np.zeros(shape, dtype=label_dtype(len(masks)))
    areas = np.array([int(m.sum()) for m in masks], dtype=np.int64)
    order = np.argsort(-areas, kind="stable")
    for rank, index in enumerate(order, start=1):
        labels[masks[index]] = rank
    return labels
