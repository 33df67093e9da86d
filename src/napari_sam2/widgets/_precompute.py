"""One "Precompute embeddings" run seen from the main thread: progress, cancel, the status.

The worker (:func:`~napari_sam2.widgets._workers.precompute_worker`) encodes each frame whose
features are not in the session's embedding store and yields ``(frame_idx, encoded)``;
:class:`PrecomputeRun` counts them for the progress bar and reports the end. Cancelling stops
the worker after the frame it is encoding; every frame encoded so far stays in the store, so
the next run resumes there. No layer is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.store.location import format_bytes
from ._session import StoreStatus
from ._worker_run import WorkerRun
from ._workers import CancelHandle

__all__ = ["PrecomputeRun", "describe_store"]


def describe_store(status: StoreStatus | None) -> str:
    """The status line: ``"312/312 slices encoded (cache: 2.4 GB)"``, and when frames are
    stored only under other settings, which ones (so a user who embedded the stack with
    another contrast or model learns why it is encoded again)."""
    if status is None:
        return "embeddings: not stored on disk"
    text = (f"{status.stored}/{status.frames} slices encoded "
            f"(cache: {format_bytes(status.size_bytes)})")
    if status.stored < status.frames and status.other_stored > status.stored:
        settings = " and ".join(status.other_differences) or "settings"
        text += f"; {status.other_stored} stored with another {settings}"
    return text


class PrecomputeRun:
    """Main-thread side of one precompute worker.

    Args:
        worker: the (not yet started) worker.
        handle: its :class:`CancelHandle`.
        total: frames it will visit.
        on_step: called per frame with the frames done so far and ``total``.
        on_done: called once at the end with ``completed`` (every frame visited; see
            :attr:`stepped_aside` for a run that made way for other work).
        on_error: called with the exception when encoding fails.
    """

    def __init__(
        self, worker: Any, handle: CancelHandle, total: int,
        on_step: Callable[[int, int], None], on_done: Callable[[PrecomputeRun, bool], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.total = total
        self._on_step = on_step
        self.done = 0
        self.encoded = 0
        self._run = WorkerRun(
            worker, handle, on_item=self._step,
            on_done=lambda ok: on_done(self, ok and self.done == self.total),
            on_error=on_error,
        )

    worker = property(lambda self: self._run.worker)
    handle = property(lambda self: self._run.handle)
    started = property(lambda self: self._run.started)
    finished = property(lambda self: self._run.finished)
    stopped = property(lambda self: self._run.stopped)
    error = property(lambda self: self._run.error)

    @property
    def stepped_aside(self) -> bool:
        """The run stopped early to let a click or another job go first (not cancelled)."""
        return self.handle.stepped_aside and not self.stopped and self.error is None

    def _step(self, item: Any) -> None:
        _, encoded = item  # a slice encoded after a cancel is stored all the same: count it
        self.done += 1
        self.encoded += bool(encoded)
        self._on_step(self.done, self.total)

    def cancel(self) -> None:
        """Stop after the frame being encoded (it is still stored)."""
        self._run.cancel()

    def abandon(self) -> None:
        """The worker never started (dropped from the queue): finish without it."""
        self._run.abandon()
