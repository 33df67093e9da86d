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
from ._worker_run import WorkerRun
from ._workers import CancelHandle

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
        self.writer, self.total = writer, total
        self._can_write, self._on_frame = can_write, on_frame
        self.done = 0
        self.frames_written: list[int] = []
        self._run = WorkerRun(
            worker, handle, on_item=self._write, on_done=lambda ok: on_done(self, ok),
            on_error=on_error, on_start=writer.begin_run, on_end=writer.end_run,
        )

    worker = property(lambda self: self._run.worker)
    handle = property(lambda self: self._run.handle)
    started = property(lambda self: self._run.started)
    finished = property(lambda self: self._run.finished)
    stopped = property(lambda self: self._run.stopped)
    error = property(lambda self: self._run.error)

    def _write(self, item: Any) -> None:
        if self.stopped:
            return
        frame_idx, masks = item
        if not self._can_write():
            return
        try:
            self.writer.write(frame_idx, masks)
        except ValueError as err:  # the labels layer cannot take these values: stop here
            self._run.fail(err)
            self.cancel()
            return
        self.done += 1
        self.frames_written.append(frame_idx)
        self._on_frame(frame_idx, self.done)

    def cancel(self) -> None:
        """Stop after the current frame; nothing more is written from now on."""
        self._run.cancel()

    def abandon(self) -> None:
        """The worker never started (dropped from the queue): finish without it."""
        self._run.abandon()
