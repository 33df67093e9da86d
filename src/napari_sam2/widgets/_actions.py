"""Actions of the dock widget: prompts from scripts, propagation (with cancel) and "segment
everything".

:class:`ActionsMixin` is mixed into :class:`~napari_sam2.widgets._widget.SAM2Widget` next to
:class:`~napari_sam2.widgets._controller.WidgetController`, whose state it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from ..core.stacks.source import frame_read_lock
from ._labels_writer import LabelsWriter, check_label_values
from ._layers import spatial_shape
from ._runs import PropagationRun
from ._workers import CancelHandle, Failure, everything_worker, propagate_worker

__all__ = ["ActionsMixin"]


class ActionsMixin:
    """Prompts (``new_object``, ``add_point``, ``add_box``), ``propagate``, ``cancel`` and
    ``segment_everything`` of the widget."""

    # ------------------------------------------------------------------ prompts
    def new_object(self) -> int:
        """Make the next free label value the current object; returns it."""
        used = set() if self._prompts is None else self._prompts.object_ids()
        self.current_object = max([self._labels_max(), *used]) + 1
        return self.current_object

    def _toggle_positive(self) -> None:
        self.positive = not self.positive

    def _set_defaults(self, obj_id: int | None = None, positive: bool | None = None) -> None:
        obj_id = self.current_object if obj_id is None else obj_id
        positive = self.positive if positive is None else positive
        self._show_object(obj_id, positive)
        if self._prompts is not None:
            self._prompts.set_defaults(obj_id, positive)
        if self._labels is not None:
            self._labels.selected_label = obj_id

    def _plane_coords(self, position: Sequence[float]) -> np.ndarray:
        coords = np.asarray(position, dtype=float)
        ndim = len(spatial_shape(self._image))
        if coords.shape[-1] == 2 and ndim > 2:
            lead = np.asarray(self._current_indices()[:-2], dtype=float)
            lead = np.broadcast_to(lead, (*coords.shape[:-1], ndim - 2))
            coords = np.concatenate([lead, coords], axis=-1)
        if coords.shape[-1] != ndim:
            raise ValueError(f"Give {ndim} coordinates (data order, …, y, x) or just (y, x).")
        return coords

    def add_point(
        self, position: Sequence[float], positive: bool | None = None, obj_id: int | None = None
    ) -> None:
        """Add a click at ``position`` (data coordinates of the image, or ``(y, x)`` on the
        current slice); defaults: the current polarity and object."""
        prompts = self._prompt_layers()
        obj_id = self.current_object if obj_id is None else obj_id
        with prompts.defaults(obj_id, self.positive if positive is None else positive):
            prompts.points.add(self._plane_coords(position)[None])

    def add_box(
        self, corner: Sequence[float], opposite: Sequence[float], obj_id: int | None = None
    ) -> None:
        """Add a box prompt from two opposite corners (as :meth:`add_point` positions)."""
        prompts = self._prompt_layers()
        a, b = self._plane_coords(corner), self._plane_coords(opposite)
        verts = np.array([a, a, b, b])  # corners in order: (y0, x0), (y0, x1), (y1, x1), (y1, x0)
        verts[1, -1], verts[3, -1] = b[-1], a[-1]
        with prompts.defaults(self.current_object if obj_id is None else obj_id):
            prompts.boxes.add_rectangles(verts)

    # ------------------------------------------------------------------ propagation
    def propagate(self, direction: str = "both", frame_range: tuple[int, int] | None = None) -> Any:
        """Track every object through the stack on a worker; returns the worker.

        ``direction``: ``"forward"``, ``"backward"`` or ``"both"``; ``frame_range``:
        ``(first, last)`` inclusive, or ``None`` for the whole stack. Each frame is written into
        the Labels layer as it arrives (one undo step for the run);
        :attr:`propagation_finished` is emitted at the end.
        """
        if self._run is not None:
            raise RuntimeError("A propagation is already running; cancel it or wait.")
        if self._model is None or self._image is None:
            raise RuntimeError("Choose an image and load a model first.")
        if self.frame_axis is None:
            raise RuntimeError("A 2D image has nothing to propagate through.")
        nothing = "Nothing to propagate: click an object (or draw a box) first."
        if self._prompts is None:
            raise ValueError(nothing)
        session = self._sync()
        if session is None:
            raise RuntimeError("The prompts are being updated; try again in a moment.")
        if not session.prompts:
            raise ValueError(nothing)
        handle = CancelHandle()
        worker = propagate_worker(session, direction, frame_range, handle)
        worker._sam2_session = session
        writer = LabelsWriter(self._ensure_labels(), self._geometry.placement, self._overwrite)
        labels = writer.layer
        self._run = PropagationRun(
            worker, handle, writer, session.expected_items(direction, frame_range),
            can_write=lambda: labels in self._viewer.layers,
            on_frame=self._on_frame, on_done=self._on_run_done,
            on_error=partial(self._report, "Propagation failed"),
        )
        worker.started.connect(self._on_run_started)
        self._set_running(True)
        self._progress(0, self._run.total)
        return self._jobs.submit(worker)

    def _on_run_started(self) -> None:
        self.propagation_started.emit()  # type: ignore[attr-defined]

    def _on_frame(self, frame_idx: int, done: int) -> None:
        self._progress(done, self._run.total if self._run else done)
        self.frame_propagated.emit(frame_idx)  # type: ignore[attr-defined]

    def _on_run_done(self, run: PropagationRun, completed: bool) -> None:
        if self._run is run:
            self._run = None
        self._set_running(False)
        if completed:
            self._progress(run.total, run.total)
        self.propagation_finished.emit(completed)  # type: ignore[attr-defined]

    def cancel(self) -> None:
        """Stop the propagation after the frame being computed; frames written so far stay."""
        run = self._run
        if run is None:
            return
        run.cancel()
        if not run.started and self._jobs.remove(run.worker):
            run.abandon()

    # ------------------------------------------------------------------ segment everything
    def segment_everything(self, **options: Any) -> Any:
        """Segment every object on the current slice into new label values (after the
        largest one in use), on a worker; existing labels are never overwritten. ``options``
        go to :class:`~napari_sam2.core.image.mask_generator.SAM2AutomaticMaskGenerator`."""
        self._require_idle("segment everything")
        if self._model is None or self._image is None:
            raise RuntimeError("Choose an image and load a model first.")
        session = self._ensure_session()
        if session is None:
            raise RuntimeError("The prompts are being updated; try again in a moment.")
        frame_idx = self.current_frame()
        with frame_read_lock(session.frames):  # the pre-encoder may be reading too
            frame = session.frames.read(frame_idx)
        options = {"points_per_side": self._points_per_side(), **options}
        worker = everything_worker(self._model, frame, options)
        placement = self._geometry.placement
        worker.returned.connect(partial(self._write_everything, placement, frame_idx))
        return self._jobs.submit(worker)

    def _write_everything(self, placement: Any, frame_idx: int, found: Any) -> None:
        if isinstance(found, Failure):
            self._report("Segment everything failed", found.error)
            return
        if self._image is None:
            return
        layer = self._ensure_labels()
        used = set() if self._prompts is None else self._prompts.object_ids()
        offset = max([self._labels_max(), *used])
        plane = np.asarray(layer.data[placement.key(frame_idx)])
        free = np.nonzero((plane == 0) & (found > 0))
        values = found[free].astype(np.int64) + offset
        try:
            check_label_values(layer, int(values.max()) if values.size else 0)
        except ValueError as err:
            self._report("Segment everything", err)
            return
        values = values.astype(layer.data.dtype)
        if free[0].size:
            with layer.block_history():
                layer.data_setitem(placement.full_indices(frame_idx, free), values)
        self.everything_finished.emit(int(np.unique(values).size))  # type: ignore[attr-defined]
