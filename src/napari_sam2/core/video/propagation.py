"""Propagation of the video predictor: SAM 2's ``propagate_in_video`` and our ``propagate``
(forward, backward or both ways within a frame range).

Both check their arguments when called and return a generator; the memory encoding of new
prompts (``propagate_in_video_preflight``) runs on its first step. A frame's results are stored
before it is yielded, so stopping early (``close()``, an exception such as a
:class:`~napari_sam2.core.stacks.source.FrameReadError`) keeps every yielded frame and a later
call can resume from there.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import torch

from .engine import VideoInferenceBase
from .prompts import check_frame_idx
from .state import VideoInferenceState

__all__ = ["VideoPropagationMixin"]

Output = tuple[int, list[Hashable], torch.Tensor]
_DIRECTIONS = ("forward", "backward", "both")


class VideoPropagationMixin(VideoInferenceBase):
    """``propagate_in_video`` and ``propagate`` of :class:`SAM2VideoPredictor`."""

    def _prompted_frames(self, state: VideoInferenceState) -> list[int]:
        """Conditioning frames of any object once new prompts are committed (eager checks)."""
        if not state.objects:
            raise RuntimeError(
                "No prompts yet: add points, a box or a mask for at least one object "
                "(add_new_points_or_box / add_new_mask) before propagating."
            )
        frames: set[int] = set()
        for obj in state.objects.values():
            own = set(state.frame_store.cond_outputs(obj.key))
            own |= {t for t, temp in obj.temp_outputs.items() if temp.is_cond}
            if not own:
                raise RuntimeError(
                    f"Object id {obj.obj_id!r} has no prompted frame left: add points, a box "
                    "or a mask for it, or remove it with remove_object."
                )
            frames |= own
        return sorted(frames)

    def propagate_in_video(
        self,
        inference_state: VideoInferenceState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[Output]:
        """Track all objects from ``start_frame_idx`` (default: the first prompted frame) over
        ``max_frame_num_to_track`` further frames (default: to the end / start), as SAM 2:
        forward it yields frames ``start .. min(start + max, T - 1)``; in reverse
        ``start .. max(start - max, 0)``, and nothing when ``start`` is 0.

        Yields:
            ``(frame_idx, obj_ids, video_res_masks)``, masks ``num_objects×1×H×W`` logits.

        Raises (at the call):
            RuntimeError: no prompts; IndexError / ValueError: bad arguments.
        """
        state = self._check_state(inference_state)
        prompted = self._prompted_frames(state)
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
        return self._run_propagation(state, [(order, bool(reverse))])

    def propagate(
        self,
        inference_state: VideoInferenceState,
        direction: str = "forward",
        frame_range: tuple[int, int] | None = None,
        start_frame_idx: int | None = None,
    ) -> Iterator[Output]:
        """Track all objects from a start frame to the end(s) of ``frame_range``.

        Args:
            direction: ``"forward"`` yields ``start, start + 1, ..., last``; ``"backward"``
                yields ``start, start - 1, ..., first``; ``"both"`` does the forward pass and
                then the backward pass, so the start frame is yielded twice (the second result
                replaces the first; it differs only for objects not prompted there):
                ``(last - start + 1) + (start - first + 1)`` items.
            frame_range: ``(first, last)``, inclusive; default the whole stack.
            start_frame_idx: default the first prompted frame (of any object) in the range,
                the last one for ``"backward"``.

        Yields:
            ``(frame_idx, obj_ids, video_res_masks)`` as :meth:`propagate_in_video`.

        Raises (at the call):
            RuntimeError: no prompts; ValueError: bad ``direction`` / ``frame_range``, or no
            prompted frame in the range and no ``start_frame_idx``; IndexError: frames
            outside the stack.
        """
        state = self._check_state(inference_state)
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}.")
        n = state.num_frames
        first, last = 0, n - 1
        if frame_range is not None:
            if isinstance(frame_range, (str, bytes)) or len(frame_range) != 2:
                raise ValueError(f"frame_range must be (first, last), got {frame_range!r}.")
            first = check_frame_idx(frame_range[0], n, "frame_range[0]")
            last = check_frame_idx(frame_range[1], n, "frame_range[1]")
            if first > last:
                raise ValueError(f"frame_range must have first <= last, got {frame_range!r}.")
        prompted = [t for t in self._prompted_frames(state) if first <= t <= last]
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
        passes = []
        if direction in ("forward", "both"):
            passes.append((range(start, last + 1), False))
        if direction in ("backward", "both"):
            passes.append((range(start, first - 1, -1), True))
        return self._run_propagation(state, passes)

    @torch.inference_mode()
    def _run_propagation(
        self, state: VideoInferenceState, passes: list[tuple[range, bool]]
    ) -> Iterator[Output]:
        self.propagate_in_video_preflight(state)
        for order, reverse in passes:
            yield from self._track_frames(state, order, reverse)
