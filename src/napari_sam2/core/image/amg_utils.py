"""Building blocks of automatic mask generation: prompt grids, crops, boxes, RLE, filtering.

Conventions used throughout:

* masks are ``B×H×W`` bool tensors (or one ``H×W`` bool array);
* boxes are XYXY with *inclusive* right/bottom edges, i.e. the coordinates of the last mask
  pixel (as in SAM), so a one-pixel mask at (x, y) has the box ``[x, y, x, y]`` and the XYWH
  record ``[x, y, 0, 0]``; empty masks get ``[0, 0, 0, 0]``;
* crop boxes are XYXY with *exclusive* right/bottom edges (``image[y0:y1, x0:x1]``);
* point grids are ``N×2`` arrays of (x, y) in [0, 1], x varying fastest;
* masks are stored as run-length encodings, see :mod:`napari_sam2.core.image.rle` (whose
  functions are re-exported here).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms

from .rle import area_from_rle, coco_decode_rle, coco_encode_rle, mask_to_rle, rle_to_mask

__all__ = [
    "MaskBatch",
    "area_from_rle",
    "batch_iterator",
    "batched_mask_to_box",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "coco_decode_rle",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "postprocess_small_regions",
    "remove_small_regions",
    "rle_to_mask",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]



class MaskBatch:
    """Columns of per-mask data (tensors, arrays or lists of equal length) filtered together."""

    def __init__(self, **columns: Any) -> None:
        self._columns: dict[str, Any] = {}
        for key, value in columns.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(value, (torch.Tensor, np.ndarray, list)):
            raise TypeError(f"column {key!r} must be a tensor, array or list, not {type(value)}")
        self._columns[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._columns[key]

    def __delitem__(self, key: str) -> None:
        del self._columns[key]

    def __contains__(self, key: object) -> bool:
        return key in self._columns

    def __len__(self) -> int:
        for value in self._columns.values():
            return len(value)
        return 0

    def keys(self) -> list[str]:
        return list(self._columns)

    def filter(self, keep: torch.Tensor | np.ndarray) -> None:
        """Keep the rows selected by ``keep`` (a bool mask or integer indices), in that order."""
        keep_t = torch.as_tensor(keep)
        if keep_t.dtype == torch.bool:
            idx = torch.nonzero(keep_t.cpu(), as_tuple=False).flatten()
        else:
            idx = keep_t.cpu().long().flatten()
        idx_np = idx.numpy()
        for key, value in self._columns.items():
            if isinstance(value, torch.Tensor):
                self._columns[key] = value[idx.to(value.device)]
            elif isinstance(value, np.ndarray):
                self._columns[key] = value[idx_np]
            else:
                self._columns[key] = [value[i] for i in idx_np.tolist()]

    def cat(self, other: MaskBatch) -> None:
        """Append the rows of ``other`` (columns missing here are taken over as they are)."""
        for key, value in other._columns.items():
            mine = self._columns.get(key)
            if mine is None:
                self._columns[key] = value
            elif isinstance(value, torch.Tensor):
                self._columns[key] = torch.cat([mine, value.to(mine.device)], dim=0)
            elif isinstance(value, np.ndarray):
                self._columns[key] = np.concatenate([mine, value], axis=0)
            else:
                self._columns[key] = list(mine) + list(value)

    def to_numpy(self) -> None:
        """Turn every tensor column into a float32 numpy array."""
        for key, value in self._columns.items():
            if isinstance(value, torch.Tensor):
                self._columns[key] = value.detach().float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# prompt grids and crops


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n²×2`` (x, y) points in [0, 1]: the centres of an ``n×n`` grid of equal cells."""
    if n_per_side < 1:
        raise ValueError(f"a point grid needs at least 1 point per side, got {n_per_side}")
    half_cell = 1 / (2 * n_per_side)
    centres = np.linspace(half_cell, 1 - half_cell, n_per_side)
    xs, ys = np.meshgrid(centres, centres)  # xs[i, j] = centres[j], ys[i, j] = centres[i]
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer ``0..n_layers``; layer ``i`` has ``int(n / scale**i)`` per side."""
    return [
        build_point_grid(int(n_per_side / (scale_per_layer**layer)))
        for layer in range(n_layers + 1)
    ]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, exclusive ends) and their layer indices for an ``H×W`` image.

    Layer 0 is the whole image; layer ``i >= 1`` tiles it with ``2**i × 2**i`` overlapping
    crops (overlap ``overlap_ratio * short side * 2 / 2**i`` pixels), listed column by column.
    """
    im_h, im_w = int(im_size[0]), int(im_size[1])
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers: list[int] = [0]
    short_side = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        # ceil((overlap * (n - 1) + length) / n) in exact integer arithmetic
        crop_w = -(-(overlap * (per_side - 1) + im_w) // per_side)
        crop_h = -(-(overlap * (per_side - 1) + im_h) // per_side)
        x_starts = [(crop_w - overlap) * i for i in range(per_side)]
        y_starts = [(crop_h - overlap) * i for i in range(per_side)]
        for x0, y0 in itertools.product(x_starts, y_starts):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


def batch_iterator(batch_size: int, *columns: Sequence[Any]) -> Iterator[list[Any]]:
    """Yield ``[col[i:i+batch_size] for col in columns]`` over columns of equal length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not columns or any(len(c) != len(columns[0]) for c in columns):
        raise ValueError("batch_iterator needs one or more columns of the same length")
    for start in range(0, len(columns[0]), batch_size):
        yield [c[start : start + batch_size] for c in columns]


# --------------------------------------------------------------------------------------------
# scores, boxes and coordinate frames


def calculate_stability_score(
    logits: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU of masks binarised at ``threshold ± offset``: ``…×H×W`` logits -> ``…`` float32.

    The strict mask lies inside the loose one, so the IoU is a ratio of pixel counts. A mask
    whose loose version is empty gets NaN (0/0), as in the reference.
    """
    inner = (logits > (mask_threshold + threshold_offset)).sum(dim=(-2, -1), dtype=torch.int32)
    outer = (logits > (mask_threshold - threshold_offset)).sum(dim=(-2, -1), dtype=torch.int32)
    return inner / outer


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """``…×H×W`` bool masks -> ``…×4`` int64 XYXY boxes (inclusive ends; empty -> zeros)."""
    *lead, h, w = masks.shape
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1).to(torch.uint8)  # …×H
    cols = masks.any(dim=-2).to(torch.uint8)  # …×W
    top = rows.argmax(dim=-1)
    bottom = (h - 1) - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = (w - 1) - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    nonempty = rows.any(dim=-1, keepdim=True)
    return boxes * nonempty


def box_xyxy_to_xywh(box: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """One XYXY box (length 4) -> XYWH, as a new tensor/array of the same type."""
    out = box.clone() if isinstance(box, torch.Tensor) else np.array(box, copy=True)
    out[2] = box[2] - box[0]
    out[3] = box[3] - box[1]
    return out


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """``B×4`` crop-frame boxes -> ``B`` bool: some side lies within ``atol`` pixels of an edge
    of the crop that is not also an edge of the original image (``orig_box``)."""
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(orig_box, dtype=torch.float32, device=boxes.device)
    near_crop = (boxes - crop).abs() <= atol
    near_image = (boxes - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=-1)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """Shift ``…×4`` XYXY boxes from crop to image coordinates."""
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """Shift ``…×2`` (x, y) points from crop to image coordinates."""
    return points + torch.tensor([int(crop_box[0]), int(crop_box[1])], device=points.device)


def uncrop_masks(
    masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int
) -> torch.Tensor:
    """Place ``B×h×w`` crop masks into ``B×orig_h×orig_w`` zero masks at ``crop_box``."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    out = masks.new_zeros((*masks.shape[:-2], orig_h, orig_w))
    out[..., y0:y1, x0:x1] = masks
    return out


# --------------------------------------------------------------------------------------------
# post-processing


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill small holes or drop small islands of an ``H×W`` bool mask (8-connectivity).

    ``mode="holes"``: background regions with fewer than ``area_thresh`` pixels become
    foreground -- including, as in SAM, small background regions touching the image border.
    ``mode="islands"``: foreground regions smaller than ``area_thresh`` are removed; when every
    region is that small, the largest one is kept. Returns ``(mask, changed)``; ``changed`` is
    False when nothing was filled or removed (SAM flags a lone small island as changed).
    """
    from skimage.measure import label

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    fill_holes = mode == "holes"
    working = ~mask if fill_holes else mask
    regions, n_regions = label(working, connectivity=2, return_num=True)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(regions, small), True
    keep = np.setdiff1d(np.arange(1, n_regions + 1), small)
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    if keep.size == n_regions:  # a lone small region: nothing to remove
        return mask, False
    return np.isin(regions, keep), True


def postprocess_small_regions(data: MaskBatch, min_area: int, nms_thresh: float) -> MaskBatch:
    """Fill holes, then drop islands, smaller than ``min_area`` pixels in every mask of
    ``data`` (columns ``rles`` and ``boxes``, as numpy), then remove the duplicates this may
    create by box NMS at ``nms_thresh``, preferring unchanged masks. Edits ``data`` in place."""
    if len(data) == 0:
        return data
    boxes = torch.as_tensor(np.asarray(data["boxes"]), dtype=torch.float32).clone()
    unchanged = torch.ones(len(data), dtype=torch.float32)
    new_rles: dict[int, dict[str, Any]] = {}
    for i, rle in enumerate(data["rles"]):
        mask, filled = remove_small_regions(rle_to_mask(rle), min_area, mode="holes")
        mask, trimmed = remove_small_regions(mask, min_area, mode="islands")
        if filled or trimmed:
            mask_t = torch.from_numpy(mask)[None]
            new_rles[i] = mask_to_rle(mask_t)[0]
            boxes[i] = batched_mask_to_box(mask_t)[0].float()
            unchanged[i] = 0.0
    keep = batched_nms(
        boxes, unchanged, torch.zeros(len(data), dtype=torch.int64), iou_threshold=nms_thresh
    )
    for i, rle in new_rles.items():
        data["rles"][i] = rle
    data["boxes"] = boxes.numpy()
    data.filter(keep)
    return data
