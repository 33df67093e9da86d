"""Encode the frames around the one the user is looking at, in the background.

Encoding a frame (the Hiera image encoder) is by far the slowest part of a click: about 1–2 s
per frame on a CPU at 1024 px. While the user looks at (or clicks on) slice ``k`` of a stack,
a :class:`PreEncoder` encodes slice ``k`` itself if needed, then ``k+1, k-1, k+2, k-2, …`` up
to ``radius`` slices away, on a daemon thread, into the state's
:class:`~napari_sam2.core.video.feature_cache.FeatureCache`. A later click on one of those slices
then only runs the (fast) prompt encoder and mask decoder; a click on a slice being encoded
waits for that encoding instead of starting another (the cache is single-flight).

Foreground work comes first: :meth:`PreEncoder.pause` (or ``with pre.paused():``) stops the
thread from starting another frame (the frame in progress is finished). Failures in the
background (an unreadable frame, …) are logged and skipped; the foreground then meets the
same frame as if there had been no pre-encoder and reports any error itself.

Example::

    predictor = SAM2VideoPredictor.from_pretrained("sam2.1_hiera_tiny")
    state = predictor.init_state(stack)
    with PreEncoder(predictor, state, radius=2) as pre:
        pre.focus(10)           # encodes 10, 11, 9, 12, 8 in the background
        ...                     # the user looks at the slice
        with pre.paused():
            predictor.add_new_points_or_box(state, 11, 1, points=[[40, 50]], labels=[1])

No Qt, no napari: the dock widget drives one from its events.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .predictor import SAM2VideoPredictor
    from .state import VideoInferenceState

__all__ = ["PreEncoder", "neighbour_order"]

log = logging.getLogger(__name__)


def neighbour_order(frame_idx: int, radius: int, num_frames: int) -> list[int]:
    """``frame_idx, frame_idx+1, frame_idx-1, frame_idx+2, …`` up to ``radius`` away, keeping
    only frames in ``[0, num_frames)`` (so an out-of-range ``frame_idx`` gives only the
    in-range frames within reach, possibly none)."""
    order = [frame_idx]
    for d in range(1, radius + 1):
        order += [frame_idx + d, frame_idx - d]
    return [t for t in order if 0 <= t < num_frames]


class _Worker:
    """Everything the thread needs; it holds no reference to the :class:`PreEncoder`, so
    that dropping the last reference to the latter stops the thread (``weakref.finalize``)."""

    def __init__(self, predictor: Any, state: VideoInferenceState) -> None:
        self.predictor, self.state = predictor, state
        self.cond = threading.Condition()
        self.queue: deque[int] = deque()
        self.paused = False
        self.closed = False
        self.current: int | None = None  # frame being encoded now
        self.encoded = 0
        self.failed = 0
        self.last_error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def stop(self) -> None:
        """Ask the thread to end after its current frame (no waiting)."""
        with self.cond:
            self.closed = True
            self.queue.clear()
            self.cond.notify_all()

    def run(self) -> None:
        cache = self.state.feature_cache
        while True:
            with self.cond:
                while not self.closed and (self.paused or not self.queue):
                    self.cond.wait()
                if self.closed:
                    return
                frame_idx = self.current = self.queue.popleft()
            try:
                if not (self.state.closed or frame_idx in cache or cache.computing(frame_idx)):
                    self.predictor.encode_frame(self.state, frame_idx)
                    with self.cond:
                        self.encoded += 1
            except Exception as err:
                log.warning("pre-encoding frame %d failed (skipped): %s", frame_idx, err)
                log.debug("pre-encoding frame %d failed", frame_idx, exc_info=True)
                with self.cond:
                    self.failed += 1
                    self.last_error = err
            finally:
                with self.cond:
                    self.current = None
                    self.cond.notify_all()


class PreEncoder:
    """Background encoder of the frames around the current one.

    Args:
        predictor: the :class:`~napari_sam2.core.video.predictor.SAM2VideoPredictor` (any
            object with its ``encode_frame(state, frame_idx)``).
        state: the predictor's state of the stack; its feature cache is raised to hold at
            least ``2 * radius + 2`` frames (the neighbourhood plus the frame before it moved).
        radius: encode up to this many frames on either side of the focused one (0: only
            the focused frame).

    The thread starts at the first :meth:`focus` and ends with :meth:`close` (also when the
    object is garbage-collected, or used as a context manager). It is a daemon thread and
    never delays the interpreter's exit.
    """

    def __init__(self, predictor: SAM2VideoPredictor, state: VideoInferenceState,
                 radius: int = 2) -> None:
        if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)) \
                or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        self.radius = int(radius)
        cache = state.feature_cache
        cache.max_items = max(cache.max_items, 2 * self.radius + 2)
        self._worker = _Worker(predictor, state)
        self._focus: int | None = None
        self._finalizer = weakref.finalize(self, self._worker.stop)

    # ------------------------------------------------------------------ control
    def focus(self, frame_idx: int) -> None:
        """The user is on ``frame_idx``: encode it and its neighbours, nearest first (see
        :func:`neighbour_order`), replacing the frames still planned. Frames already cached
        are skipped; frames outside the stack are left out. Does nothing after :meth:`close`.

        Raises:
            TypeError: ``frame_idx`` is not an integer.
        """
        if isinstance(frame_idx, (bool, np.bool_)) or not isinstance(frame_idx, (int, np.integer)):
            raise TypeError(f"frame_idx must be an integer, got {frame_idx!r}")
        w = self._worker
        cache = w.state.feature_cache
        plan = [t for t in neighbour_order(int(frame_idx), self.radius, w.state.num_frames)
                if t not in cache]
        with w.cond:
            if w.closed:
                return
            self._focus = int(frame_idx)
            w.queue.clear()
            w.queue.extend(plan)
            if plan and w.thread is None:
                w.thread = threading.Thread(
                    target=w.run, name="napari-sam2-pre-encoder", daemon=True
                )
                w.thread.start()
            w.cond.notify_all()

    def pause(self) -> None:
        """Start no new frame until :meth:`resume` (the frame in progress is finished; use
        :meth:`wait_idle` to wait for it)."""
        with self._worker.cond:
            self._worker.paused = True

    def resume(self) -> None:
        """Continue with the planned frames."""
        with self._worker.cond:
            self._worker.paused = False
            self._worker.cond.notify_all()

    @contextmanager
    def paused(self) -> Iterator[PreEncoder]:
        """Within the block no new frame is started; afterwards the previous pause state is
        restored (nests)."""
        with self._worker.cond:
            was = self._worker.paused
        self.pause()
        try:
            yield self
        finally:
            if not was:
                self.resume()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it (it finishes the frame in progress; at most
        ``timeout`` seconds if given). Idempotent; the cache keeps what was encoded."""
        self._finalizer()  # stops the worker, once
        thread = self._worker.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> PreEncoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ inspection
    @property
    def state(self) -> VideoInferenceState:
        """The state whose frames are encoded."""
        return self._worker.state

    @property
    def focus_frame(self) -> int | None:
        """The frame last given to :meth:`focus` (``None`` before)."""
        return self._focus

    @property
    def pending(self) -> list[int]:
        """Frames planned and not started yet, in order."""
        with self._worker.cond:
            return list(self._worker.queue)

    @property
    def is_paused(self) -> bool:
        return self._worker.paused

    @property
    def closed(self) -> bool:
        return self._worker.closed

    @property
    def alive(self) -> bool:
        """Whether the thread is running (it starts at the first :meth:`focus`)."""
        thread = self._worker.thread
        return thread is not None and thread.is_alive()

    @property
    def encoded(self) -> int:
        """Frames encoded by the background thread so far (for tests and scripts)."""
        return self._worker.encoded

    @property
    def failed(self) -> int:
        """Frames whose background encoding failed (and were skipped)."""
        return self._worker.failed

    @property
    def last_error(self) -> BaseException | None:
        """The latest background failure, if any."""
        return self._worker.last_error

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no frame is being encoded and none is planned (or the encoder is
        paused or closed); returns False if ``timeout`` seconds passed first. For tests and
        scripts; also used to let a frame in progress finish before changing the model."""
        w = self._worker
        with w.cond:
            return w.cond.wait_for(
                lambda: w.current is None and (w.closed or w.paused or not w.queue), timeout
            )

    def __repr__(self) -> str:
        w = self._worker
        status = "closed" if w.closed else "paused" if w.paused else "running"
        return (
            f"PreEncoder(radius={self.radius}, focus={self._focus}, {status}, "
            f"encoded={w.encoded}, failed={w.failed}, pending={len(w.queue)})"
        )
