"""Typed, validated prompts (clicks, boxes, mask logits) for one image or video frame.

:meth:`Prompts.from_arrays` turns whatever the caller passed (lists, numpy arrays or torch
tensors) into checked ``float32`` / ``int32`` numpy arrays with an explicit batch axis, and
raises :class:`ValueError` naming the offending argument instead of letting a shape error
surface from inside torch.

Conventions (those of SAM 2's predictors):

* ``point_coords``: ``N×2`` or ``B×N×2`` points, ``(x, y)`` in pixels of the original image
  (or in ``[0, 1]`` when ``normalized``);
* ``point_labels``: ``N`` or ``B×N`` integers: 1 foreground click, 0 background click,
  2 / 3 top-left / bottom-right box corner, -1 padding (ignored by the model, so batches with
  different click counts can be padded; padding points are not range-checked);
* ``box``: ``4`` or ``B×4``, XYXY (``x0, y0, x1, y1``) with ``x0 <= x1`` and ``y0 <= y1``;
* ``mask_input``: ``1×h×w`` or ``B×1×h×w`` low-resolution mask logits, typically the
  ``low_res_masks`` of an earlier prediction (``h = w = image_size / 4``).

Bounds: with pixel coordinates a point must lie on a pixel, ``0 <= x < W`` and ``0 <= y < H``;
a box may reach the far edge, ``0 <= x0 <= x1 <= W`` and ``0 <= y0 <= y1 <= H``. Normalised
coordinates must lie in ``[0, 1]``. Empty point arrays (``N = 0``) count as "no points".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["VALID_LABELS", "Prompts", "as_numpy"]

VALID_LABELS: tuple[int, ...] = (-1, 0, 1, 2, 3)
_MAX_LISTED = 5  # offending entries quoted in an error message


def as_numpy(value: Any, name: str) -> np.ndarray:
    """``value`` (array-like or torch tensor) as a numpy array; ValueError if not numeric."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - ragged nested lists, odd objects: re-raised below
        raise ValueError(f"{name} must be a numeric array, could not convert it: {err}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}.")
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")


def _list(rows: np.ndarray) -> str:
    shown = "; ".join(str(np.round(r, 3).tolist()) for r in rows[:_MAX_LISTED])
    more = f" (and {len(rows) - _MAX_LISTED} more)" if len(rows) > _MAX_LISTED else ""
    return shown + more


def _parse_points(
    point_coords: Any, point_labels: Any
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if point_coords is None and point_labels is None:
        return None, None
    if point_coords is None:
        raise ValueError("point_labels were given without point_coords.")
    if point_labels is None:
        raise ValueError("point_coords were given without point_labels (one label per point).")
    coords = as_numpy(point_coords, "point_coords")
    labels = as_numpy(point_labels, "point_labels")
    if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
        raise ValueError(
            f"point_coords must be N×2 or B×N×2 (x, y) points, got shape {coords.shape}."
        )
    if labels.shape != coords.shape[:-1]:
        raise ValueError(
            f"point_labels must have shape {coords.shape[:-1]} (one label per point of "
            f"point_coords {coords.shape}), got {labels.shape}."
        )
    if coords.shape[-2] == 0 or coords.shape[0] == 0:
        return None, None  # no points at all
    if coords.dtype.kind == "b":
        raise ValueError("point_coords must be numbers, got a boolean array.")
    _check_finite(coords, "point_coords")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise ValueError("point_labels must be integers (-1, 0, 1, 2 or 3).")
    bad = ~np.isin(labels.astype(np.int64), VALID_LABELS)
    if bad.any():
        raise ValueError(
            f"point_labels must be 1 (foreground), 0 (background), 2/3 (box corners) or "
            f"-1 (padding); got {sorted(set(labels[bad].tolist()))}."
        )
    if coords.ndim == 2:
        coords, labels = coords[None], labels[None]
    return coords.astype(np.float32), labels.astype(np.int32)


def _parse_box(box: Any) -> np.ndarray | None:
    if box is None:
        return None
    boxes = as_numpy(box, "box")
    if boxes.dtype.kind == "b":
        raise ValueError("box must be numbers, got a boolean array.")
    if boxes.shape == (4,):
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise ValueError(f"box must be 4 or B×4 (x0, y0, x1, y1), got shape {boxes.shape}.")
    _check_finite(boxes, "box")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise ValueError(
            "box must be XYXY with x0 <= x1 and y0 <= y1 (top-left corner first); got "
            f"{_list(boxes[inverted])}."
        )
    return boxes.astype(np.float32)


def _parse_mask(mask_input: Any, mask_hw: tuple[int, int] | None) -> np.ndarray | None:
    if mask_input is None:
        return None
    mask = as_numpy(mask_input, "mask_input")
    expected = "1×h×w or B×1×h×w"
    if mask_hw is not None:
        expected = "1×{0}×{1} or B×1×{0}×{1}".format(*mask_hw)
    if mask.ndim == 3:
        mask = mask[None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] == 0:
        raise ValueError(
            f"mask_input must be {expected} low-resolution mask logits (e.g. low_res_masks of "
            f"an earlier prediction, one mask per prompt), got shape {np.shape(mask_input)}."
        )
    if mask_hw is not None and tuple(mask.shape[2:]) != tuple(mask_hw):
        raise ValueError(
            f"mask_input must be {expected} (the model's low-resolution mask size), got shape "
            f"{np.shape(mask_input)}."
        )
    _check_finite(mask, "mask_input")
    return mask.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Prompts:
    """Validated prompts for one image, each with a leading batch axis ``B``.

    Attributes:
        point_coords: ``B×N×2`` float32 (x, y), or ``None``.
        point_labels: ``B×N`` int32 in {-1, 0, 1, 2, 3}, or ``None`` (with the coordinates).
        box: ``B×4`` float32 XYXY, or ``None``.
        mask_input: ``B×1×h×w`` (or ``1×1×h×w``, shared by all ``B``) float32 logits, or
            ``None``.
        normalized: coordinates are in ``[0, 1]`` rather than pixels.
    """

    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None
    normalized: bool = False

    @classmethod
    def from_arrays(
        cls,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        *,
        image_hw: tuple[int, int] | None = None,
        normalized: bool = False,
        mask_hw: tuple[int, int] | None = None,
        require_prompt: bool = True,
    ) -> Prompts:
        """Validate raw prompts (see the module docstring for shapes and conventions).

        Args:
            point_coords, point_labels, box, mask_input: the prompts; ``None`` when absent.
            image_hw: ``(H, W)`` of the image, for the bounds check of pixel coordinates
                (skipped when ``None``; normalised coordinates are always checked).
            normalized: coordinates are already in ``[0, 1]``.
            mask_hw: expected ``(h, w)`` of ``mask_input`` (not checked when ``None``).
            require_prompt: raise when no point, box or mask is given.

        Raises:
            ValueError: naming the offending argument.
        """
        coords, labels = _parse_points(point_coords, point_labels)
        boxes = _parse_box(box)
        mask = _parse_mask(mask_input, mask_hw)
        prompts = cls(coords, labels, boxes, mask, bool(normalized))
        if require_prompt and prompts.is_empty:
            raise ValueError(
                "No prompt given: pass point_coords with point_labels, a box and/or a mask_input."
            )
        prompts._check_batch_sizes()
        prompts._check_bounds(image_hw)
        return prompts

    @property
    def is_empty(self) -> bool:
        """No point, box or mask prompt."""
        return self.point_coords is None and self.box is None and self.mask_input is None

    @property
    def batch_size(self) -> int:
        """Number of prompt sets ``B`` (objects segmented at once); 1 when empty."""
        for array in (self.point_coords, self.box, self.mask_input):
            if array is not None:
                return int(array.shape[0])
        return 1

    def _check_batch_sizes(self) -> None:
        sizes = {}
        if self.point_coords is not None:
            sizes["point_coords"] = self.point_coords.shape[0]
        if self.box is not None:
            sizes["box"] = self.box.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(
                "point_coords and box must have the same batch size B (B×N×2 points with B×4 "
                f"boxes), got {sizes['point_coords']} and {sizes['box']}."
            )
        if self.mask_input is not None and sizes:
            batch = next(iter(sizes.values()))
            if self.mask_input.shape[0] not in (1, batch):
                raise ValueError(
                    f"mask_input must have batch size 1 or {batch} (that of the point/box "
                    f"prompts), got {self.mask_input.shape[0]}."
                )

    def _check_bounds(self, image_hw: tuple[int, int] | None) -> None:
        if self.normalized:
            limits, what = (1.0, 1.0), "normalised coordinates must lie in [0, 1]"
        elif image_hw is not None:
            limits = (float(image_hw[1]), float(image_hw[0]))  # (W, H)
            what = f"image is {image_hw[1]}×{image_hw[0]} (width×height) pixels"
        else:
            return
        w_lim, h_lim = limits
        if self.point_coords is not None:
            x, y = self.point_coords[..., 0], self.point_coords[..., 1]
            used = self.point_labels != -1
            if self.normalized:
                outside = used & ((x < 0) | (x > 1) | (y < 0) | (y > 1))
            else:
                outside = used & ((x < 0) | (x >= w_lim) | (y < 0) | (y >= h_lim))
            if outside.any():
                raise ValueError(
                    f"point_coords outside the image ({what}; points are (x, y)): "
                    f"{_list(self.point_coords[outside])}."
                )
        if self.box is not None:
            b = self.box
            outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w_lim) | (b[:, 3] > h_lim)
            if outside.any():
                raise ValueError(
                    f"box outside the image ({what}; boxes are x0, y0, x1, y1): "
                    f"{_list(b[outside])}."
                )
