"""Validation and conversion of the video predictor's prompts and indices.

Clicks and boxes are checked with :class:`~napari_sam2.core.image.prompts.Prompts` and mapped to
model-input pixels as SAM 2's video predictor does (divide by the frame's ``(W, H)``, multiply
by ``image_size``; a box becomes two points labelled 2 and 3, placed before the clicks). Mask
prompts are binary masks of the frame's size, resized to the model input (bilinear,
antialiased, threshold 0.5) when needed.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..image.prompts import Prompts, as_numpy

__all__ = [
    "check_frame_idx",
    "check_obj_id",
    "concat_points",
    "mask_inputs_from",
    "point_inputs_from",
]


def check_frame_idx(frame_idx: Any, num_frames: int, name: str = "frame_idx") -> int:
    """``frame_idx`` as an int in ``[0, num_frames)``; IndexError / TypeError otherwise."""
    if isinstance(frame_idx, (bool, np.bool_)) or not isinstance(frame_idx, (int, np.integer)):
        raise TypeError(f"{name} must be an integer frame index, got {frame_idx!r}.")
    if not 0 <= frame_idx < num_frames:
        raise IndexError(
            f"{name}={frame_idx} is outside the stack, which has {num_frames} frames "
            f"(0..{num_frames - 1})."
        )
    return int(frame_idx)


def check_obj_id(obj_id: Any) -> Hashable:
    """``obj_id`` if it can be an object id (hashable, not ``None``)."""
    if obj_id is None:
        raise ValueError("obj_id must not be None; use e.g. an int label per object.")
    try:
        hash(obj_id)
    except TypeError:
        raise TypeError(
            f"obj_id must be hashable (e.g. an int), got {type(obj_id).__name__}."
        ) from None
    return obj_id


def point_inputs_from(
    points: Any,
    labels: Any,
    box: Any,
    normalize_coords: bool,
    video_hw: tuple[int, int],
    image_size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Clicks (``N×2`` or ``1×N×2`` (x, y), labels ``N`` / ``1×N``) and/or a box (4 numbers,
    XYXY) of one object -> ``{"point_coords": 1×M×2, "point_labels": 1×M}`` in model-input
    pixels, box corners first.

    Raises:
        ValueError: nothing given, points without labels (or the reverse), several objects'
            prompts at once, or a malformed / out-of-frame prompt.
    """
    if (points is None) != (labels is None):
        raise ValueError("points and labels must be given together (one label per point).")
    if points is None and box is None:
        raise ValueError("Give points (with labels) and/or a box.")
    if box is not None:
        box = as_numpy(box, "box")
        if box.size != 4:
            raise ValueError(
                f"box must be 4 numbers (x0, y0, x1, y1) for one object, got shape {box.shape}."
            )
        box = box.reshape(4)
    prompts = Prompts.from_arrays(
        points, labels, box, image_hw=video_hw, normalized=not normalize_coords
    )
    if prompts.batch_size != 1:
        raise ValueError(
            "points must be N×2 (or 1×N×2): one object per call; call add_new_points_or_box "
            f"once per object (got prompts for {prompts.batch_size} objects)."
        )
    coords = np.zeros((1, 0, 2), np.float32)
    point_labels = np.zeros((1, 0), np.int32)
    if prompts.box is not None:
        coords = prompts.box.reshape(1, 2, 2)
        point_labels = np.array([[2, 3]], np.int32)
    if prompts.point_coords is not None:
        coords = np.concatenate([coords, prompts.point_coords], axis=1)
        point_labels = np.concatenate([point_labels, prompts.point_labels], axis=1)
    if coords.shape[1] == 0:
        raise ValueError("points is empty and no box was given: nothing to segment from.")
    xy = torch.from_numpy(np.ascontiguousarray(coords))
    if normalize_coords:
        h, w = video_hw
        xy = xy / torch.tensor([w, h], dtype=torch.float32)
    xy = xy * image_size
    return {
        "point_coords": xy.to(device),
        "point_labels": torch.from_numpy(point_labels).to(device),
    }


def concat_points(
    old: dict[str, torch.Tensor] | None, new: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Append ``new`` clicks after ``old`` ones (``old`` may be ``None``)."""
    if old is None:
        return new
    return {
        "point_coords": torch.cat([old["point_coords"], new["point_coords"]], dim=1),
        "point_labels": torch.cat([old["point_labels"], new["point_labels"]], dim=1),
    }


def mask_inputs_from(
    mask: Any, video_hw: tuple[int, int], image_size: int, device: torch.device
) -> torch.Tensor:
    """A binary ``H×W`` mask of the frame (bool, or numbers: non-zero = object) -> the
    ``1×1×S×S`` float 0/1 mask prompt at the model input size.

    Raises:
        ValueError: wrong shape, NaN values, or an empty mask (which would delete the
            object on that frame).
    """
    array = as_numpy(mask, "mask")
    if array.shape != tuple(video_hw):
        raise ValueError(
            f"mask must be a 2D H×W array of the frame's size {video_hw[0]}×{video_hw[1]}, "
            f"got shape {array.shape}."
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("mask contains NaN or infinite values; pass a boolean mask.")
    binary = array if array.dtype == bool else array != 0
    empty_hint = (
        "an empty mask prompt would delete the object on this frame; to delete an object "
        "use remove_object(inference_state, obj_id), to undo the prompts of a frame "
        "clear_all_prompts_in_frame(...)."
    )
    if not binary.any():
        raise ValueError(f"mask is empty (no pixel set): {empty_hint}")
    t = torch.from_numpy(np.ascontiguousarray(binary))[None, None].float().to(device)
    if tuple(video_hw) != (image_size, image_size):
        t = F.interpolate(
            t, size=(image_size, image_size), mode="bilinear", align_corners=False,
            antialias=True,
        )
        t = (t >= 0.5).float()
        if not t.any():
            raise ValueError(
                f"mask is too small: no pixel is left once it is resized to the model's "
                f"{image_size}×{image_size} input; {empty_hint}"
            )
    return t
