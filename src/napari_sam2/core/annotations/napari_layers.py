"""napari annotations (Points, Shapes, their CSV files) as SAM 2 prompts.

This module is the one place where napari-style coordinates become SAM prompts; the command
line and the dock widget both use it. No Qt and no napari imports.

Coordinates
-----------
napari stores Points and Shapes data as ``N×D`` arrays in *data order*: ``(…, y, x)``, the
last two axes being rows and columns. SAM wants ``(x, y)``. Here

* the **spatial axes are always the last two** (``y = coords[:, -2]``, ``x = coords[:, -1]``),
  in pixels of the image, with no half-pixel shift (napari draws pixel ``i`` centred on ``i``,
  SAM's pixel coordinates are used the same way);
* for ``D = 2`` there is no frame axis (``frame_axis=None``) and every prompt is on frame 0;
* for ``D >= 3`` the **frame index** is ``round(coords[:, frame_axis])``; any other axis
  (e.g. ``z`` when following time through a T×Z×Y×X stack) is ignored -- the stack opened for
  tracking decides which plane is used.

Point annotations (the Points layer ``features`` convention)
-------------------------------------------------------------
A Points layer's ``features`` table (also what napari's "Save" writes as extra CSV columns)
describes each point with

* ``obj_id`` -- int >= 1, the label value of the object the click belongs to (default 1);
* ``positive`` -- bool, ``True`` for a foreground click, ``False`` for a background click
  (default ``True``). A ``label`` column with SAM's values (1 positive, 0 negative) is
  accepted instead; ``positive`` wins if both are present.

Rectangles
----------
A Shapes rectangle (4 vertices, ``4×D``) becomes one XYXY box: the bounding box of its
vertices in the last two axes (so a rotated rectangle gives its axis-aligned bounding box).
All vertices must lie on the same frame. napari's Shapes "Save" writes no features, so when no
object ids are given each rectangle is its own object, numbered 1, 2, … in order; a CSV may
carry an ``obj_id`` column to choose them (e.g. to pair a box with clicks of the same object).

The prompts are :class:`~napari_sam2.core.annotations.frame_prompt.FramePrompt` s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .frame_prompt import FramePrompt, _integer, merge_prompts

__all__ = ["point_features", "prompts_from_boxes", "prompts_from_points"]

_TRUE = {"1", "1.0", "true", "t", "yes", "y", "positive", "pos", "+"}
_FALSE = {"0", "0.0", "false", "f", "no", "n", "negative", "neg", "-"}


# ---------------------------------------------------------------------------------------------
def _coords(coords: Any, frame_axis: int | None, what: str) -> tuple[np.ndarray, int | None]:
    """``coords`` as a float64 N×D array and ``frame_axis`` checked and made non-negative."""
    try:
        arr = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a numeric N×D array: {err}") from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{what} must be N×D with D >= 2 (…, y, x), got shape {arr.shape}")
    ndim = arr.shape[1]
    if ndim == 2:
        if frame_axis is not None:
            raise ValueError(
                f"{what} are 2D (y, x) and have no frame axis; pass frame_axis=None "
                f"(got frame_axis={frame_axis})"
            )
        return arr, None
    if frame_axis is None:
        raise ValueError(
            f"{what} have {ndim} coordinates; say which one is the frame: frame_axis=0 for "
            "(t, y, x)"
        )
    fa = _integer(frame_axis, "frame_axis")
    if not -ndim <= fa < ndim:
        raise ValueError(f"frame_axis={fa} is out of range for {ndim}D {what}")
    fa %= ndim
    if fa >= ndim - 2:
        raise ValueError(
            f"frame_axis={fa} is a spatial axis; the last two of the {ndim} axes are (y, x)"
        )
    return arr, fa


def _frames(arr: np.ndarray, frame_axis: int | None, what: str) -> np.ndarray:
    if frame_axis is None:
        return np.zeros(len(arr), dtype=np.int64)
    frames = arr[:, frame_axis]
    bad = ~np.isfinite(frames)
    if bad.any():
        raise ValueError(f"{what} {int(np.argmax(bad))} has a NaN or infinite frame coordinate")
    return np.round(frames).astype(np.int64)


def _obj_ids(obj_ids: Any, n: int, default: Sequence[int] | int) -> np.ndarray:
    if obj_ids is None:
        return np.broadcast_to(np.asarray(default, dtype=np.int64), (n,)).copy()
    ids = np.asarray(obj_ids)
    if ids.ndim == 0:
        ids = np.full(n, ids)
    if ids.shape != (n,):
        raise ValueError(f"obj_ids must have one entry per annotation ({n}), got shape {ids.shape}")
    if ids.dtype.kind not in "iuf" or (ids.dtype.kind == "f" and not np.isfinite(ids).all()):
        raise ValueError(f"obj_ids must be integers >= 1, got {ids.tolist()[:5]}")
    if (ids != np.round(ids)).any() or (ids < 1).any():
        bad = ids[(ids != np.round(ids)) | (ids < 1)]
        raise ValueError(
            f"obj_ids must be integers >= 1 (0 is the background label), got {bad.tolist()[:5]}"
        )
    return ids.astype(np.int64)


def _positive(positive: Any, n: int) -> np.ndarray:
    if positive is None:
        return np.ones(n, dtype=bool)
    pos = np.asarray(positive)
    if pos.ndim == 0:
        pos = np.full(n, pos)
    if pos.shape != (n,):
        raise ValueError(f"positive must have one entry per point ({n}), got shape {pos.shape}")
    if pos.dtype == bool:
        return pos.copy()
    if pos.dtype.kind in "iuf" and np.isin(pos, (0, 1)).all():
        return pos.astype(bool)
    raise ValueError(
        f"positive must be True/False (or 1/0) for each point, got {pos.tolist()[:5]}"
    )


def prompts_from_points(
    coords: Any,
    positive: Any = None,
    obj_ids: Any = None,
    *,
    frame_axis: int | None,
) -> list[FramePrompt]:
    """Clicks in napari data order as SAM prompts, one per (frame, object).

    Args:
        coords: ``N×D`` points in napari data order (…, y, x), e.g. ``points_layer.data``.
        positive: ``N`` bools (or 1/0): foreground (True) or background click; default all True.
        obj_ids: ``N`` object ids (>= 1), or one for all; default 1.
        frame_axis: for ``D >= 3`` the axis holding the frame index (0 for (t, y, x));
            ``None`` for ``D = 2`` (all prompts on frame 0). Axes other than the frame axis
            and the last two are ignored.

    Returns:
        :class:`FramePrompt` list sorted by (frame, object); each keeps its clicks in input
        order, ``points`` as ``(x, y)``.
    """
    arr, fa = _coords(coords, frame_axis, "points")
    n = len(arr)
    pos = _positive(positive, n)
    ids = _obj_ids(obj_ids, n, 1)
    if n == 0:
        return []
    spatial = arr[:, -2:]
    bad = ~np.isfinite(spatial).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"point {i} has NaN or infinite coordinates {arr[i].tolist()}")
    frames = _frames(arr, fa, "point")
    prompts = []
    for frame, obj in sorted(set(zip(frames.tolist(), ids.tolist()))):
        sel = (frames == frame) & (ids == obj)
        if frame < 0:
            i = int(np.argmax(sel))
            raise ValueError(f"point {i} {arr[i].tolist()} lies on frame {frame} (< 0)")
        xy = spatial[sel][:, ::-1]  # (y, x) -> (x, y)
        prompts.append(FramePrompt(frame, obj, xy, pos[sel].astype(np.int32)))
    return prompts


def prompts_from_boxes(
    rectangles: Sequence[Any],
    obj_ids: Any = None,
    *,
    frame_axis: int | None,
) -> list[FramePrompt]:
    """napari rectangles (``4×D`` vertices each, data order) as SAM box prompts.

    Args:
        rectangles: a list of ``4×D`` vertex arrays (``shapes_layer.data`` filtered to
            rectangles); all of one rectangle's vertices must be on the same frame.
        obj_ids: one object id per rectangle; default ``1, 2, …`` (each rectangle its own
            object).
        frame_axis: as in :func:`prompts_from_points`.

    Returns:
        One :class:`FramePrompt` per rectangle, sorted by (frame, object), ``box`` XYXY; two
        boxes for the same object on the same frame raise :class:`ValueError`.
    """
    rects = list(rectangles)
    ids = _obj_ids(obj_ids, len(rects), np.arange(1, len(rects) + 1))
    prompts = []
    for i, rect in enumerate(rects):
        verts, fa = _coords(rect, frame_axis, f"rectangle {i}")
        if len(verts) != 4:
            raise ValueError(f"rectangle {i} must have 4 vertices, got {len(verts)}")
        if not np.isfinite(verts[:, -2:]).all():
            raise ValueError(f"rectangle {i} has NaN or infinite vertex coordinates")
        frames = _frames(verts, fa, f"rectangle {i}, vertex")
        if (frames != frames[0]).any():
            raise ValueError(
                f"rectangle {i} spans frames {sorted(set(frames.tolist()))}; draw it on one frame"
            )
        if frames[0] < 0:
            raise ValueError(f"rectangle {i} lies on frame {int(frames[0])} (< 0)")
        y, x = verts[:, -2], verts[:, -1]
        box = np.array([x.min(), y.min(), x.max(), y.max()])
        prompts.append(FramePrompt(int(frames[0]), int(ids[i]), box=box))
    return merge_prompts(prompts)


def point_features(features: Any, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """``(positive, obj_ids)`` of ``n_points`` points from a features table.

    ``features`` is a Points layer's ``features`` (a pandas DataFrame) or any mapping of
    column name to values, possibly ``None``/empty; missing columns take the defaults
    (positive True, obj_id 1). String values such as ``"True"``/``"false"``/``"1.0"`` are
    understood, so tables read from CSV work as well.
    """
    columns = {}
    if features is not None:
        names = list(features.keys()) if hasattr(features, "keys") else list(features)
        for name in names:
            columns[str(name)] = np.asarray(features[name])
    for name, col in columns.items():
        if name in ("obj_id", "positive", "label") and len(col) != n_points:
            raise ValueError(f"feature column {name!r} has {len(col)} rows for {n_points} points")
    positive = np.ones(n_points, dtype=bool)
    if "positive" in columns:
        positive = np.array([_as_bool(v, i, "positive") for i, v in enumerate(columns["positive"])],
                            dtype=bool)
    elif "label" in columns:
        positive = np.array([_as_label(v, i) for i, v in enumerate(columns["label"])], dtype=bool)
    obj_ids = np.ones(n_points, dtype=np.int64)
    if "obj_id" in columns:
        obj_ids = np.array(
            [_integer(_number(v, i, "obj_id"), f"obj_id of point {i}", 1)
             for i, v in enumerate(columns["obj_id"])],
            dtype=np.int64,
        )
    return positive, obj_ids


def _number(value: Any, row: int, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"point {row}: {column} must be a number, got {value!r}") from None


def _as_bool(value: Any, row: int, column: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"point {row}: {column} must be True/False (or 1/0), got {value!r}")


def _as_label(value: Any, row: int) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true"):
        return True
    if text in ("0", "0.0", "false"):
        return False
    raise ValueError(f"point {row}: label must be 1 (positive) or 0 (negative), got {value!r}")
