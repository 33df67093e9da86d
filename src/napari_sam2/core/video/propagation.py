"""Which frames a propagation visits: SAM 2's ``propagate_in_video`` arguments, and our
``propagate`` (forward, backward or both ways within a frame range), turned into passes.

Each function checks its arguments eagerly (errors surface at the predictor's call, not at
the first iteration) and returns a list of :data:`~napari_sam2.core.video.engine.Pass`
``(frames in order, reverse)`` for :meth:`TrackingEngine.run
<napari_sam2.core.video.engine.TrackingEngine.run>`.
"""

from __future__ import annotations

from .engine import Pass
from .prompts import check_frame_idx
from .state import VideoInferenceState

__all__ = ["DIRECTIONS", "passes_of_propagate", "passes_of_propagate_in_video", "prompted_frames"]

DIRECTIONS = ("forward", "backward", "both")


def prompted_frames(state: VideoInferenceState) -> list[int]:
    """Conditioning frames of any object once new prompts are committed.

    Raises:
        RuntimeError: no prompts, or an object without any prompted frame.
    """
    if not state.objects:
        raise RuntimeError(
            "No prompts yet: add points, a box or a mask for at least one object "
            "(add_new_points_or_box / add_new_mask) before propagating."
        )
    frames: set[int] = set()
    for obj in state.objects.values():
        own = set(state.results.cond_outputs(obj.key))
        own |= {t for t, temp in obj.temp_outputs.items() if temp.is_cond}
        if not own:
            raise RuntimeError(
                f"Object id {obj.obj_id!r} has no prompted frame left: add points, a box "
                "or a mask for it, or remove it with remove_object."
            )
        frames |= own
    return sorted(frames)


def passes_of_propagate_in_video(
    state: VideoInferenceState,
    start_frame_idx: int | None,
    max_frame_num_to_track: int | None,
    reverse: bool,
) -> list[Pass]:
    """The one pass of SAM 2's ``propagate_in_video`` (see the predictor's method)."""
    prompted = prompted_frames(state)
    n = state.num_frames
    if start_frame_idx is None:
        start = prompted[0]
    else:
        start = check_frame_idx(start_frame_idx, n, "start_frame_idx")
    count = n if max_frame_num_to_track is None else max_frame_num_to_track
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(
            f"max_frame_num_to_track must be an integer >= 0, got {max_frame_num_to_track!r}."
        )
    if reverse:
        order = range(start, max(start - count, 0) - 1, -1) if start > 0 else range(0)
    else:
        order = range(start, min(start + count, n - 1) + 1)
    return [(order, bool(reverse))]


def passes_of_propagate(
    state: VideoInferenceState,
    direction: str,
    frame_range: tuple[int, int] | None,
    start_frame_idx: int | None,
) -> list[Pass]:
    """The passes of ``propagate`` (see the predictor's method): forward, backward, or the
    forward pass then the backward pass from the same start."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    n = state.num_frames
    first, last = 0, n - 1
    if frame_range is not None:
        if isinstance(frame_range, (str, bytes)) or len(frame_range) != 2:
            raise ValueError(f"frame_range must be (first, last), got {frame_range!r}.")
        first = check_frame_idx(frame_range[0], n, "frame_range[0]")
        last = check_frame_idx(frame_range[1], n, "frame_range[1]")
        if first > last:
            raise ValueError(f"frame_range must have first <= last, got {frame_range!r}.")
    prompted = [t for t in prompted_frames(state) if first <= t <= last]
    if start_frame_idx is not None:
        start = check_frame_idx(start_frame_idx, n, "start_frame_idx")
        if not first <= start <= last:
            raise IndexError(
                f"start_frame_idx={start} is outside frame_range ({first}, {last})."
            )
    elif not prompted:
        raise ValueError(
            f"No prompted frame in frame_range ({first}, {last}): prompt a frame there or "
            "pass start_frame_idx."
        )
    else:
        start = prompted[-1] if direction == "backward" else prompted[0]
    passes: list[Pass] = []
    if direction in ("forward", "both"):
        passes.append((range(start, last + 1), False))
    if direction in ("backward", "both"):
        passes.append((range(start, first - 1, -1), True))
    return passes
