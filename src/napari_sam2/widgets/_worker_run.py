"""The main-thread life of one background worker: started, each yielded item, a failure,
cancel, and one report at the end -- however the worker ends (finished, cancelled, dropped from
the queue before it started, or failed).

A run of a particular kind (:class:`~napari_sam2.widgets._runs.PropagationRun`,
:class:`~napari_sam2.widgets._precompute.PrecomputeRun`) holds one :class:`WorkerRun` and
gives it what to do with each item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._workers import CancelHandle, Failure

__all__ = ["WorkerRun"]


class WorkerRun:
    """Bookkeeping of one worker, on the main thread.

    Args:
        worker: the (not yet started) worker; its ``started``, ``yielded``, ``errored`` and
            ``finished`` signals are connected here.
        handle: its :class:`CancelHandle` (closed once at the end).
        on_item: called with each yielded item that is not a :class:`Failure`, while the run
            is not finished (a cancelled run still receives the item being computed; the
            callback decides whether it keeps it).
        on_done: called once at the end with ``completed``: not cancelled and no error.
        on_error: called with the exception of a failure the worker reported.
        on_start, on_end: called when the worker starts, and at the end before ``on_done``.
    """

    def __init__(
        self, worker: Any, handle: CancelHandle, on_item: Callable[[Any], None],
        on_done: Callable[[bool], None], on_error: Callable[[BaseException], None],
        on_start: Callable[[], None] | None = None, on_end: Callable[[], None] | None = None,
    ) -> None:
        self.worker, self.handle = worker, handle
        self._on_item, self._on_done, self._on_error = on_item, on_done, on_error
        self._on_start, self._on_end = on_start, on_end
        self.stopped = False
        self.started = False
        self.finished = False
        self.error: BaseException | None = None
        worker.started.connect(self._started)
        worker.yielded.connect(self._yielded)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)

    def fail(self, error: BaseException) -> None:
        """Record and report ``error`` (the run still ends through :meth:`_finished`)."""
        self.error = error
        self._on_error(error)

    def cancel(self) -> None:
        """Ask the worker to stop after the item it is computing."""
        self.stopped = True
        self.handle.cancel()
        if self.started and not self.finished:
            self.worker.quit()

    def abandon(self) -> None:
        """The worker never started (dropped from the queue): finish without it."""
        self.stopped = True
        self._finished()

    def _started(self) -> None:
        self.started = True
        if self._on_start is not None:
            self._on_start()

    def _yielded(self, item: Any) -> None:
        if isinstance(item, Failure):
            self.fail(item.error)
        elif not self.finished:
            self._on_item(item)

    def _errored(self, exc: BaseException) -> None:
        self.error = exc

    def _finished(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._on_end is not None:
            self._on_end()
        try:
            self.handle.close()
        except Exception:  # noqa: BLE001 - closing must never break the widget
            pass
        self._on_done(not self.stopped and self.error is None)
