"""The segmentation session behind the dock widget: prompts in, masks out. No Qt, no napari.

A :class:`SegmentationSession` ties one stack (a
:class:`~napari_sam2.core.stacks.source.FrameSource`) to one
:class:`~napari_sam2.core.video.predictor.SAM2VideoPredictor`. It keeps the prompts the user
wants, per ``(frame, object)``, and turns their changes into masks:

* :meth:`set_prompts` (main thread, cheap) records the prompts now on the annotation layers
  and returns what changed;
* :meth:`apply` (worker thread) replays those changes into the predictor -- one
  ``add_new_points_or_box`` per changed ``(frame, object)``, with *all* of that object's
  prompts on that frame (``clear_old_points=True``), so moving or deleting a click is just a
  new call -- and yields the affected object's mask on that frame. The image encoder runs
  once per frame: the predictor caches features, so a second click on a frame only decodes;
* :meth:`propagate` (worker thread) tracks every prompted object through the stack and
  yields the masks of each frame as it is done;
* :meth:`precompute` (worker thread) fills the stack's embedding store, frame by frame, and
  :meth:`store_status` says how much of it is there.

Both generators yield ``(frame_idx, {obj_id: H×W bool mask})``: exactly the objects whose
pixels the caller may touch (see :mod:`napari_sam2.widgets._labels_writer`). Prompt state lives
in plain Python objects; the predictor's state is only touched by the generators, which the
widget runs one at a time. Scripts and tests can drain them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.annotations import FramePrompt, validate_prompts

__all__ = ["FrameMasks", "SegmentationSession"]

FrameMasks = tuple[int, dict[int, np.ndarray]]  # (frame_idx, {obj_id: H×W bool})
Key = tuple[int, int]  # (frame_idx, obj_id)


def _obj_masks(
    obj_ids: Iterable[int], masks: Any, wanted: Iterable[int] | None = None
) -> dict[int, np.ndarray]:
    """``{obj_id: H×W bool}`` from the predictor's ``num_objs×1×H×W`` logits (> 0 = on)."""
    ids = [int(o) for o in obj_ids]
    keep = set(ids) if wanted is None else {int(o) for o in wanted}
    out = {}
    for i, obj in enumerate(ids):
        if obj in keep:
            m = masks[i]
            m = m.detach().cpu().numpy() if hasattr(m, "detach") else np.asarray(m)
            out[obj] = np.asarray(m).reshape(m.shape[-2:]) > 0
    return out


@dataclass(frozen=True)
class StoreStatus:
    """What a stack's embedding store holds.

    Attributes:
        stored: frames stored for the settings in use.
        frames: frames in the stack.
        size_bytes: the store's size on disk (every key).
        other_stored: frames stored under the other key with the most of them (0: none).
        other_differences: how that key's settings differ (``("contrast",)``).
    """

    stored: int
    frames: int
    size_bytes: int
    other_stored: int = 0
    other_differences: tuple[str, ...] = ()


class SegmentationSession:
    """Prompts per (frame, object) of one stack, and the masks they give.

    Args:
        predictor: a :class:`~napari_sam2.core.video.predictor.SAM2VideoPredictor` (or any
            object with SAM 2's video-predictor API).
        frames: the stack, as a ``FrameSource`` (a 2D image is a one-frame stack).
    """

    def __init__(self, predictor: Any, frames: Any) -> None:
        self.predictor = predictor
        self.frames = frames
        self.num_frames = int(frames.num_frames)
        self.frame_shape = tuple(int(s) for s in frames.frame_shape)  # (H, W)
        self._prompts: dict[Key, FramePrompt] = {}  # what the user wants (main thread)
        self._applied: dict[Key, FramePrompt] = {}  # what the predictor has (worker side)
        self._state: Any = None

    # ------------------------------------------------------------------ prompts (main thread)
    @property
    def prompts(self) -> dict[Key, FramePrompt]:
        """The current prompts, ``{(frame_idx, obj_id): FramePrompt}`` (a copy)."""
        return dict(self._prompts)

    @property
    def objects(self) -> list[int]:
        """Ids of the objects that have at least one prompt, sorted."""
        return sorted({obj for _, obj in self._prompts})

    def set_prompts(
        self, prompts: Iterable[FramePrompt]
    ) -> tuple[dict[Key, FramePrompt | None], list[str]]:
        """Replace all prompts; returns ``(changes, errors)``.

        ``changes`` maps each ``(frame, object)`` whose prompts differ from before to its new
        :class:`FramePrompt` (``None``: all its prompts on that frame were removed). Prompts
        outside the stack are left out and described in ``errors`` (one message each).
        """
        wanted: dict[Key, FramePrompt] = {}
        errors: list[str] = []
        for prompt in prompts:
            fitted = self._fit(prompt, errors)
            if fitted is not None:
                wanted[(fitted.frame_idx, fitted.obj_id)] = fitted
        changes: dict[Key, FramePrompt | None] = {}
        for key in sorted(set(wanted) | set(self._prompts)):
            new, old = wanted.get(key), self._prompts.get(key)
            if new is None or old is None or new != old:
                if not (new is None and old is None):
                    changes[key] = new
        self._prompts = wanted
        return changes, errors

    def _fit(self, prompt: FramePrompt, errors: list[str]) -> FramePrompt | None:
        """``prompt`` checked against the stack; a click or box outside the image is left out
        (and described in ``errors``) without losing the object's other prompts."""
        h, w = self.frame_shape

        def check(p: FramePrompt) -> FramePrompt | None:
            try:
                return validate_prompts([p], self.num_frames, h, w)[0]
            except ValueError as err:
                errors.append(str(err))
                return None

        fitted = check(prompt)
        if fitted is not None or not 0 <= prompt.frame_idx < self.num_frames:
            return fitted
        del errors[-1]  # report the offending clicks / box one by one instead
        f, o = prompt.frame_idx, prompt.obj_id
        points = [] if prompt.points is None else [
            q for q in (check(FramePrompt(f, o, p[None], lab[None]))
                        for p, lab in zip(prompt.points, prompt.labels)) if q is not None
        ]
        box = None if prompt.box is None else check(FramePrompt(f, o, box=prompt.box))
        if not points and box is None:
            return None
        return FramePrompt(
            f, o,
            np.concatenate([q.points for q in points]) if points else None,
            np.concatenate([q.labels for q in points]) if points else None,
            None if box is None else box.box,
        )

    def forget_unapplied(self) -> None:
        """Forget wanted prompts the predictor did not get (after a failed :meth:`apply`), so
        that the next :meth:`set_prompts` reports them as changes again."""
        for key, prompt in list(self._prompts.items()):
            applied = self._applied.get(key)
            if applied is None or applied != prompt:
                del self._prompts[key]

    def all_changes(self) -> dict[Key, FramePrompt | None]:
        """Every current prompt as a change (to replay them into a fresh predictor state)."""
        return dict(sorted(self._prompts.items()))

    # ------------------------------------------------------------------ predictor (worker)
    @property
    def state(self) -> Any:
        """The predictor's inference state, created on first use (reads no frame itself)."""
        if self._state is None:
            self._state = self.predictor.init_state(self.frames)
        return self._state

    def apply(self, changes: Mapping[Key, FramePrompt | None]) -> Iterator[FrameMasks]:
        """Replay prompt changes into the predictor; yield each changed object's new mask.

        For a removed prompt the object's mask on that frame becomes what the predictor has
        without it (its tracked result, or nothing); an object left without any prompt is
        removed from the predictor and its mask on that frame cleared.
        """
        predictor = self.predictor
        for (frame, obj), prompt in changes.items():
            if prompt is not None:
                _, obj_ids, masks = predictor.add_new_points_or_box(
                    self.state, frame, obj,
                    points=prompt.points, labels=prompt.labels, box=prompt.box,
                    clear_old_points=True,
                )
                self._applied[(frame, obj)] = prompt
                yield frame, _obj_masks(obj_ids, masks, [obj])
                continue
            if self._applied.pop((frame, obj), None) is None:
                continue  # never reached the predictor: nothing to undo there
            if any(o == obj for _, o in self._applied):
                _, obj_ids, masks = predictor.clear_all_prompts_in_frame(self.state, frame, obj)
                found = _obj_masks(obj_ids, masks, [obj])
                yield frame, found or {obj: np.zeros(self.frame_shape, bool)}
            else:
                predictor.remove_object(self.state, obj)
                yield frame, {obj: np.zeros(self.frame_shape, bool)}

    def propagate(
        self,
        direction: str = "both",
        frame_range: tuple[int, int] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[FrameMasks]:
        """Track every prompted object; yield ``(frame_idx, {obj_id: mask})`` per frame.

        Args:
            direction: ``"forward"``, ``"backward"`` or ``"both"``.
            frame_range: ``(first, last)`` frames to stay within, or ``None`` for the stack.
            should_stop: polled after every frame; when it returns True the predictor's
                generator is closed and nothing more is yielded (the frame just computed is
                dropped).
        """
        if direction not in ("forward", "backward", "both"):
            raise ValueError(
                f"direction must be 'forward', 'backward' or 'both', got {direction!r}"
            )
        if not self._applied:
            raise ValueError("Nothing to propagate: add a click or a box on a frame first.")
        gen = self.predictor.propagate(self.state, direction=direction, frame_range=frame_range)
        try:
            for frame_idx, obj_ids, masks in gen:
                if should_stop():
                    return
                yield int(frame_idx), _obj_masks(obj_ids, masks)
        finally:
            gen.close()

    def precompute(
        self, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[tuple[int, bool]]:
        """Encode every frame whose features are not in the stack's embedding store; yield
        ``(frame_idx, encoded)`` per frame (``encoded`` False: it was stored already). Stops
        before the next frame once ``should_stop()`` is true."""
        from ..core.video.precompute import precompute

        for step in precompute(self.predictor, self.state, should_stop=should_stop):
            yield step.frame_idx, step.encoded

    @property
    def has_state(self) -> bool:
        """Whether the predictor state (and the store) were opened."""
        return self._state is not None

    def store_status(self) -> StoreStatus | None:
        """What the stack's embedding store holds, or ``None`` before the state is opened or
        without a store."""
        state = self._state
        store = getattr(state, "store", None)
        if store is None:
            return None
        from ..core.store.embedding_store import folder_size
        from ..core.store.key import key_differences

        current = store.store
        others = current.other_keys()
        other_stored, differences = 0, ()
        if others:
            other_stored = others[0][1]
            differences = tuple(key_differences(current.key, others[0][0]))
        return StoreStatus(int(store.complete().sum()), self.num_frames,
                           folder_size(current.path), other_stored, differences)

    def expected_items(self, direction: str, frame_range: tuple[int, int] | None) -> int:
        """How many frames :meth:`propagate` will yield (for a progress bar): with ``"both"``
        the start frame comes twice, as in
        :meth:`~napari_sam2.core.video.predictor.SAM2VideoPredictor.propagate`."""
        first, last = (0, self.num_frames - 1) if frame_range is None else frame_range
        prompted = sorted({f for f, _ in self._prompts if first <= f <= last}) or [first]
        start = prompted[-1] if direction == "backward" else prompted[0]
        forward, backward = last - start + 1, start - first + 1
        return {"forward": forward, "backward": backward}.get(direction, forward + backward)

    def close(self) -> None:
        """Forget the predictor state and release the frames (file handles)."""
        state, self._state = self._state, None
        if state is not None:
            try:
                self.predictor.reset_state(state)
                if hasattr(state, "close"):
                    state.close()  # deletes results spilled to disk
            except Exception:  # noqa: BLE001 - the state is dropped anyway
                pass
        self._applied.clear()
        close = getattr(self.frames, "close", None)
        if close is not None:
            close()
