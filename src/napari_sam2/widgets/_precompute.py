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

from ._workers import CancelHandle, Failure

__all__ = ["PrecomputeRun", "describe_store"]


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe_store(status: tuple[int, int, int] | None) -> str:
    """The status line: ``"312/312 slices encoded (cache: 2.4 GB)"``."""
    if status is None:
        return "embeddings: not stored on disk"
    done, total, size = status
    return f"{done}/{total} slices encoded (cache: {_size(size)})"


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
        self.worker, self.handle, self.total = worker, handle, total
        self._on_step, self._on_done, self._on_error = on_step, on_done, on_error
        self.done = 0
        self.encoded = 0
        self.stopped = False
        self.started = False
        self.finished = False
        self.error: BaseException | None = None
        worker.started.connect(self._started)
        worker.yielded.connect(self._yielded)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)

    @property
    def stepped_aside(self) -> bool:
        """The run stopped early to let a click or another job go first (not cancelled)."""
        return self.handle.stepped_aside and not self.stopped and self.error is None

    def _started(self) -> None:
        self.started = True

    def _yielded(self, item: Any) -> None:
        if isinstance(item, Failure):
            self.error = item.error
            self._on_error(item.error)
            return
        if self.finished:
            return
        _, encoded = item
        self.done += 1
        self.encoded += bool(encoded)
        self._on_step(self.done, self.total)

    def _errored(self, exc: BaseException) -> None:
        self.error = exc

    def cancel(self) -> None:
        """Stop after the frame being encoded (it is still stored)."""
        self.stopped = True
        self.handle.cancel()
        if self.started and not self.finished:
            self.worker.quit()

    def _finished(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.handle.close()
        except Exception:  # noqa: BLE001 - closing must never break the widget
            pass
        complete = self.done == self.total
        self._on_done(self, complete and not self.stopped and self.error is None)

    def abandon(self) -> None:
        """The worker never started (dropped from the queue): finish without it."""
        self.stopped = True
        self._finished()
