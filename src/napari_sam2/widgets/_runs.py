"""One propagation run seen from the main thread: progress, writes, cancel, clean-up.

The worker (see :func:`~napari_sam2.widgets._workers.propagate_worker`) computes masks; this
object receives each ``(frame_idx, {obj_id: mask})`` it yields on the main thread and writes
it with a :class:`~napari_sam2.widgets._labels_writer.LabelsWriter` in "run" mode, so the whole
run is one undo step.

Cancelling (:meth:`PropagationRun.cancel`) sets the worker's stop flag and calls
``worker.quit()``: the worker stops after the frame it is computing, and from the moment of the
call no further frame is written (a frame already computed but not yet delivered is dropped),
so the Labels layer holds exactly the frames delivered before the cancel. When the worker has
finished, the suspended generators are closed on the main thread, which closes the predictor's
propagation generator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._labels_writer import LabelsWriter
from ._workers import CancelHandle, Failure

__all__ = ["PropagationRun"]


class PropagationRun:
    """Main-thread side of one propagation worker.

    Args:
        worker: the (not yet started) propagation worker.
        handle: its :class:`CancelHandle`.
        writer: writes frames into the Labels layer.
        total: frames the worker will yield (progress bar maximum).
        can_write: called before each write; returns False when the Labels layer is gone.
        on_frame: called after a frame is written, with its index and the frames done so far.
        on_done: called once at the end with ``completed`` (True: every frame delivered).
        on_error: called with the exception when the propagation fails.
    """

    def __init__(
        self, worker: Any, handle: CancelHandle, writer: LabelsWriter, total: int,
        can_write: Callable[[], bool], on_frame: Callable[[int, int], None],
        on_done: Callable[[PropagationRun, bool], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.worker, self.handle, self.writer, self.total = worker, handle, writer, total
        self._can_write, self._on_frame, self._on_done = can_write, on_frame, on_done
        self._on_error = on_error
        self.done = 0
        self.frames_written: list[int] = []
        self.stopped = False
        self.started = False
        self.finished = False
        self.error: BaseException | None = None
        worker.started.connect(self._started)
        worker.yielded.connect(self._yielded)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)

    def _started(self) -> None:
        self.started = True
        self.writer.begin_run()

    def _yielded(self, item: Any) -> None:
        if isinstance(item, Failure):
            self.error = item.error
            self._on_error(item.error)
            return
        if self.stopped or self.finished:
            return
        frame_idx, masks = item
        if not self._can_write():
            return
        try:
            self.writer.write(frame_idx, masks)
        except ValueError as err:  # the labels layer cannot take these values: stop here
            self.error = err
            self._on_error(err)
            self.cancel()
            return
        self.done += 1
        self.frames_written.append(frame_idx)
        self._on_frame(frame_idx, self.done)

    def _errored(self, exc: BaseException) -> None:
        self.error = exc

    def cancel(self) -> None:
        """Stop after the current frame; nothing more is written from now on."""
        self.stopped = True
        self.handle.cancel()
        if self.started and not self.finished:
            self.worker.quit()

    def _finished(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.writer.end_run()
        try:
            self.handle.close()
        except Exception:  # noqa: BLE001 - closing must never break the widget
            pass
        self._on_done(self, not self.stopped and self.error is None)

    def abandon(self) -> None:
        """The worker never started (dropped from the queue): finish without it."""
        self.stopped = True
        self._finished()
