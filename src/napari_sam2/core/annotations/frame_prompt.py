"""One prompt of one object on one frame (:class:`FramePrompt`), merging prompts, prompts from
a plain dict, and fitting prompts to a stack.

Prompts for the same frame and object are merged into one :class:`FramePrompt` (one call to
the predictor): all clicks plus at most one box.

Bounds
------
:func:`validate_prompts` checks prompts against a stack: a point must lie on the image as
napari shows it (``-0.5 <= x < W - 0.5``, same for ``y``) and is then clamped into
``[0, W - 1]``; a box is clipped to ``[0, W] × [0, H]`` and refused only if nothing of it is
left; the frame must be in ``0 .. T - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FramePrompt", "merge_prompts", "prompts_from_dict", "validate_prompts"]


@dataclass(frozen=True, eq=False)
class FramePrompt:
    """Prompts for one object on one frame: a single predictor call.

    Attributes:
        frame_idx: frame (or slice) index, >= 0.
        obj_id: object id, >= 1; the value the object gets in the label image.
        points: ``N×2`` float32 points, ``(x, y)`` pixels, or ``None``.
        labels: ``N`` int32 point labels (1 positive, 0 negative), or ``None``.
        box: ``4`` float32 XYXY box ``(x0, y0, x1, y1)`` in pixels, or ``None``.
    """

    frame_idx: int
    obj_id: int
    points: np.ndarray | None = field(default=None)
    labels: np.ndarray | None = field(default=None)
    box: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("frame_idx", _integer(self.frame_idx, "frame_idx", minimum=0))
        set_("obj_id", _integer(self.obj_id, "obj_id", minimum=1))
        points, labels = self.points, self.labels
        if points is not None and len(np.asarray(points)) == 0:
            points = labels = None
        if (points is None) != (labels is None):
            raise ValueError(
                f"frame {self.frame_idx}, object {self.obj_id}: points and labels go together "
                "(one label per point)"
            )
        if points is not None:
            pts = np.asarray(points, dtype=np.float32)
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"points must be N×2 (x, y), got shape {pts.shape}")
            if not np.isfinite(pts).all():
                raise ValueError(
                    f"frame {self.frame_idx}, object {self.obj_id}: points contain NaN or inf"
                )
            labs = np.asarray(labels)
            if labs.shape != (len(pts),):
                raise ValueError(
                    f"labels must have shape ({len(pts)},), one per point, got {labs.shape}"
                )
            if not np.isin(labs, (0, 1)).all():
                raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {labs}")
            pts.setflags(write=False)
            labs = labs.astype(np.int32)
            labs.setflags(write=False)
            set_("points", pts)
            set_("labels", labs)
        else:
            set_("points", None)
            set_("labels", None)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float32).reshape(-1)
            if box.shape != (4,):
                raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {box.size}")
            if not np.isfinite(box).all():
                raise ValueError(
                    f"frame {self.frame_idx}, object {self.obj_id}: box contains NaN or inf"
                )
            if box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"box must be XYXY with x0 <= x1 and y0 <= y1, got {box}")
            box.setflags(write=False)
            set_("box", box)
        if self.points is None and self.box is None:
            raise ValueError(
                f"frame {self.frame_idx}, object {self.obj_id}: a prompt needs points or a box"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FramePrompt):
            return NotImplemented
        same = lambda a, b: (a is None and b is None) or (  # noqa: E731
            a is not None and b is not None and np.array_equal(a, b)
        )
        return (
            self.frame_idx == other.frame_idx
            and self.obj_id == other.obj_id
            and same(self.points, other.points)
            and same(self.labels, other.labels)
            and same(self.box, other.box)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [f"frame_idx={self.frame_idx}", f"obj_id={self.obj_id}"]
        if self.points is not None:
            parts.append(f"points={self.points.tolist()}, labels={self.labels.tolist()}")
        if self.box is not None:
            parts.append(f"box={self.box.tolist()}")
        return f"FramePrompt({', '.join(parts)})"


def _integer(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(as_float) or as_float != round(as_float):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    result = int(round(as_float))
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    return result


def merge_prompts(*groups: Iterable[FramePrompt]) -> list[FramePrompt]:
    """Merge prompts that share (frame, object) into one; sorted by (frame, object).

    Clicks are concatenated in order; at most one box per (frame, object) -- SAM takes one box
    per call -- else :class:`ValueError`.
    """
    merged: dict[tuple[int, int], FramePrompt] = {}
    for prompt in (p for group in groups for p in group):
        if not isinstance(prompt, FramePrompt):
            raise TypeError(f"expected FramePrompt objects, got {type(prompt).__name__}")
        key = (prompt.frame_idx, prompt.obj_id)
        old = merged.get(key)
        if old is None:
            merged[key] = prompt
            continue
        if old.box is not None and prompt.box is not None:
            raise ValueError(
                f"object {key[1]} has two boxes on frame {key[0]}; SAM takes one box per "
                "object and frame"
            )
        pts = [p for p in (old.points, prompt.points) if p is not None]
        labs = [p for p in (old.labels, prompt.labels) if p is not None]
        merged[key] = FramePrompt(
            key[0], key[1],
            np.concatenate(pts) if pts else None,
            np.concatenate(labs) if labs else None,
            old.box if old.box is not None else prompt.box,
        )
    return [merged[k] for k in sorted(merged)]


def prompts_from_dict(prompts: Mapping[tuple[int, int], Mapping[str, Any]]) -> list[FramePrompt]:
    """``{(frame_idx, obj_id): {"points": N×2 (x, y), "labels": N, "box": XYXY}}`` as
    :class:`FramePrompt` objects (each entry needs points and/or a box; labels default to 1)."""
    out = []
    for key, value in prompts.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"prompt keys must be (frame_idx, obj_id) tuples, got {key!r}")
        if not isinstance(value, Mapping):
            raise ValueError(f"prompt {key}: expected a dict with points/labels/box")
        unknown = set(value) - {"points", "labels", "box"}
        if unknown:
            raise ValueError(f"prompt {key}: unknown entries {sorted(unknown)}")
        points, labels = value.get("points"), value.get("labels")
        if points is not None and labels is None:
            labels = np.ones(len(np.asarray(points)), dtype=np.int32)
        out.append(FramePrompt(key[0], key[1], points, labels, value.get("box")))
    return merge_prompts(out)


def validate_prompts(
    prompts: Iterable[FramePrompt], num_frames: int, height: int, width: int
) -> list[FramePrompt]:
    """Check prompts against a ``num_frames × height × width`` stack; return them fitted.

    A point must lie on the image as napari shows it (``-0.5 <= x < width - 0.5``, same for
    ``y``); it is clamped into ``[0, width - 1] × [0, height - 1]``. A box is clipped to
    ``[0, width] × [0, height]`` and must keep a part inside. The frame must be in
    ``0 .. num_frames - 1``.

    Raises:
        ValueError: naming the offending point (``(x, y)``) or box, object and frame.
    """
    out = []
    for p in prompts:
        where = f"object {p.obj_id} on frame {p.frame_idx}"
        if not 0 <= p.frame_idx < num_frames:
            what = (
                f"point (x, y) = {tuple(np.round(p.points[0], 2).tolist())}"
                if p.points is not None else f"box {np.round(p.box, 2).tolist()}"
            )
            raise ValueError(
                f"{what} of object {p.obj_id} is on frame {p.frame_idx}, outside the stack "
                f"(frames 0..{num_frames - 1})"
            )
        points = p.points
        if points is not None:
            inside = (
                (points[:, 0] >= -0.5) & (points[:, 0] < width - 0.5)
                & (points[:, 1] >= -0.5) & (points[:, 1] < height - 0.5)
            )
            if not inside.all():
                x, y = points[int(np.argmin(inside))].tolist()
                raise ValueError(
                    f"point (x, y) = ({x:g}, {y:g}) of {where} is outside the image "
                    f"({width} × {height} pixels)"
                )
            points = np.clip(points, 0, [width - 1, height - 1])
        box = p.box
        if box is not None:
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box {np.round(box, 2).tolist()} of {where} has no area")
            clipped = np.clip(box, 0, [width, height, width, height])
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise ValueError(
                    f"box {np.round(box, 2).tolist()} (x0, y0, x1, y1) of {where} lies outside "
                    f"the image ({width} × {height} pixels)"
                )
            box = clipped
        out.append(FramePrompt(p.frame_idx, p.obj_id, points, p.labels, box))
    return out
