"""One-at-a-time scheduling of the widget's background workers (main thread only).

The predictor's state must not be used by two threads at once, so the widget never runs two
jobs together. :class:`JobQueue` starts one worker at a time; when it is idle it first asks
``next_prediction()`` for a worker applying the latest prompt edits (so clicks made during a
propagation are applied right after it, coalesced into one job), then starts queued jobs
(propagations, "segment everything", model loading) in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

__all__ = ["JobQueue"]


class JobQueue(QObject):
    """Runs workers created with ``_start_thread=False`` one after the other."""

    #: True when a job starts while idle, False when the last one has finished.
    busy_changed = Signal(bool)

    def __init__(self, next_prediction: Callable[[], Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._next_prediction = next_prediction
        self._queue: deque[Any] = deque()
        self._last_busy = False
        self.active: Any = None

    @property
    def waiting(self) -> int:
        """How many jobs wait to start."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether a job runs or waits."""
        return self.active is not None or bool(self._queue)

    def submit(self, worker: Any) -> Any:
        """Queue ``worker``; it starts when all earlier jobs (and pending predictions) are done."""
        self._queue.append(worker)
        self.poke()
        return worker

    def remove(self, worker: Any) -> bool:
        """Take a job that has not started out of the queue; returns whether it was there."""
        try:
            self._queue.remove(worker)
        except ValueError:
            return False
        self._update_busy()
        return True

    def drop_queued(self) -> list[Any]:
        """Forget the jobs that have not started; returns them."""
        dropped = list(self._queue)
        self._queue.clear()
        self._update_busy()
        return dropped

    def poke(self) -> None:
        """Start the next job if none is running."""
        if self.active is None:
            worker = self._next_prediction()
            if worker is None and self._queue:
                worker = self._queue.popleft()
            if worker is not None:
                self.active = worker
                worker.finished.connect(self._on_finished)
                self._update_busy()
                worker.start()
        self._update_busy()

    def _on_finished(self) -> None:
        self.active = None
        self.poke()

    def _update_busy(self) -> None:
        busy = self.busy
        if busy != self._last_busy:
            self._last_busy = busy
            self.busy_changed.emit(busy)
