"""Behaviour of the SAM 2 dock widget, without its Qt widgets: layers, model, session, jobs.

:class:`WidgetController` holds the viewer, the image, labels and prompt layers, the model and
the :class:`~napari_sam2.widgets._session.SegmentationSession`. It keeps the session in step
with the prompt layers, runs every slow step on a worker, one at a time
(:class:`~napari_sam2.widgets._jobs.JobQueue`), propagates (with cancel), segments everything
on a slice and sets the model's precision; the background pre-encoder's lifetime is a
:class:`~napari_sam2.widgets._pre_encoding.PreEncoding` it owns.

It touches no Qt widget. A view (:class:`~napari_sam2.widgets._widget.SAM2Widget`) or a script
sets its plain attributes and properties (:attr:`~WidgetController.image_size`,
:attr:`~WidgetController.contrast_mode`, :attr:`~WidgetController.points_per_side`,
:attr:`~WidgetController.overwrite`, :attr:`~WidgetController.current_object`,
:attr:`~WidgetController.positive`, the layers, ...) and listens to its signals. Everything
here runs on the main thread; no layer is touched from a worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.stacks.source import frame_read_lock
from ._data_watch import DataWatch
from ._jobs import JobQueue
from ._labels_writer import LabelsWriter, labels_max, write_new_labels
from ._layers import (
    MAX_LABEL,
    StackGeometry,
    box_vertices,
    make_labels_layer,
    plane_coords,
    read_prompts,
    spatial_shape,
)
from ._pre_encoding import PreEncoding
from ._precompute import PrecomputeRun, describe_store
from ._prompting import PromptLayers
from ._runs import PropagationRun
from ._session import SegmentationSession
from ._workers import (
    CancelHandle,
    Failure,
    apply_worker,
    everything_worker,
    load_model_worker,
    precompute_worker,
    propagate_worker,
)

__all__ = ["CONTRAST_MODES", "WidgetController"]

#: How frames are scaled for the model: by the image layer's contrast limits, or by
#: percentiles of each frame.
CONTRAST_MODES = ("limits", "auto")


class WidgetController(QObject):
    """State and scripting API of the SAM 2 dock widget, for one napari viewer.

    Args:
        viewer: the napari viewer; its active layer is taken as the image if it is one, and
            so is the first image added while none is chosen.
        parent: optional Qt parent.
    """

    #: The network after :meth:`set_model` finished loading it.
    model_loaded = Signal(object)
    #: A frame's masks were (re)written after a prompt change: the frame index.
    masks_updated = Signal(int)
    propagation_started = Signal()
    #: One propagated frame was written: the frame index.
    frame_propagated = Signal(int)
    #: A propagation ended: True if every frame was written, False if cancelled or failed.
    propagation_finished = Signal(bool)
    #: "Segment everything" wrote this many new labels.
    everything_finished = Signal(int)
    #: Background work started (True) or everything is done (False).
    busy_changed = Signal(bool)

    #: What the model is: "no model loaded", "loading …" or its name, device and size.
    status_changed = Signal(str)
    #: Propagation progress: (frames written, frames expected).
    progress_changed = Signal(int, int)
    #: A propagation was started (True) or has ended (False).
    running_changed = Signal(bool)
    #: The object id and polarity given to new prompts: (current_object, positive).
    prompt_defaults_changed = Signal(int, bool)
    #: The viewer's layers, the chosen image or labels layer, or the followed axis changed.
    layers_changed = Signal()
    precision_changed = Signal(str)
    #: The precision the loaded model runs in and why, e.g. "bf16: this CPU has AMX (...)".
    precision_in_use_changed = Signal(str)
    pre_encode_changed = Signal(bool)
    overwrite_changed = Signal(bool)
    #: "Precompute embeddings" progress: (frames done, frames of the stack).
    precompute_progress = Signal(int, int)
    #: A precompute run started (True) or ended (False).
    precompute_running = Signal(bool)
    #: The embedding store's status line, e.g. "312/312 slices encoded (cache: 2.4 GB)".
    store_status_changed = Signal(str)
    #: A message for the user: (level, text) with level "info", "warning" or "error".
    notice = Signal(str, str)
    #: A failure to report: (context, exception); the context may be "".
    failed = Signal(str, object)

    def __init__(self, viewer: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._image: Any = None
        self._labels: Any = None
        self._prompts: PromptLayers | None = None
        self._prompt_sets: dict[str, PromptLayers] = {}  # per image layer (its unique_id)
        self._model: Any = None
        self._predictor: Any = None
        self._session: SegmentationSession | None = None
        self._session_key: Any = None
        self._geometry: StackGeometry | None = None
        self._pending: dict = {}
        self._run: PropagationRun | None = None
        self._precompute: PrecomputeRun | None = None
        self._run_watch = self._precompute_watch = DataWatch((), lambda layer: None)
        self._adopt_after_run: Any = None  # an image added while a stopping run ends
        self._store_status = "embeddings: none yet"
        self._frame_axis = 0
        self._overwrite = False
        self._current_object = 1
        self._positive = True
        self._contrast_mode = "limits"
        self._precision = "auto"
        self._precision_in_use = "no model loaded"
        self._sync_scheduled = False
        self._resync_when_idle = False
        self._shown_errors: set[str] = set()
        self._model_text = "no model loaded"
        self._status = self._model_text
        self._alive = True
        #: Model input size used by :meth:`set_model` when it is given none.
        self.image_size = 1024
        #: Default ``points_per_side`` of :meth:`segment_everything`.
        self.points_per_side = 32
        #: Whether the "load a model" hint was shown (set it to skip the hint).
        self.hint_shown = False
        self._jobs = JobQueue(self._next_prediction, self)
        self._pre = PreEncoding(lambda: self._jobs.busy)
        self._jobs.busy_changed.connect(self._on_busy)
        viewer.dims.events.current_step.connect(self._refresh_pre_encoder)
        from ..core.scratch import remove_stale

        remove_stale()  # once per process: what a killed session of ours left behind
        layers = viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self._on_layer_removed)
        active = layers.selection.active
        if isinstance(active, Image):
            self.image_layer = active

    # ------------------------------------------------------------------ public state
    @property
    def viewer(self) -> Any:
        """The napari viewer."""
        return self._viewer

    @property
    def alive(self) -> bool:
        """False once :meth:`shutdown` has run."""
        return self._alive

    @property
    def jobs(self) -> JobQueue:
        """The queue that runs the background jobs one at a time."""
        return self._jobs

    @property
    def status(self) -> str:
        """The text last sent with :attr:`status_changed`."""
        return self._status

    @property
    def model(self) -> Any:
        """The loaded SAM 2 network, or ``None``."""
        return self._model

    @property
    def session(self) -> SegmentationSession | None:
        """The current :class:`SegmentationSession` (prompts and predictor state), or ``None``."""
        return self._session

    @property
    def busy(self) -> bool:
        """Whether any background work is running, queued or about to be."""
        return self._jobs.busy or bool(self._pending) or self._sync_scheduled

    @property
    def is_running(self) -> bool:
        """Whether a propagation is running or queued."""
        return self._run is not None

    @property
    def image_layer(self) -> Any:
        """The Image layer being segmented."""
        return self._image

    @image_layer.setter
    def image_layer(self, layer: Any) -> None:
        if layer == self._image:
            return
        self._require_idle("change the image")
        if self._prompts is not None:
            self._prompts.disconnect()
        self._drop_session()
        self._image, self._labels, self._prompts = layer, None, None
        if layer is None:
            self.layers_changed.emit()
            return
        if self._frame_axis >= max(1, len(spatial_shape(layer)) - 2):
            self._frame_axis = 0
        for candidate in self._viewer.layers:  # the labels made for this image before
            meta = candidate.metadata.get("napari_sam2", {})
            if meta.get("role") == "masks" and meta.get("image") == layer.name and (
                tuple(candidate.data.shape) == spatial_shape(layer)
            ):
                self._labels = candidate
        self.layers_changed.emit()
        if self._model is not None:
            self._activate()

    @property
    def labels_layer(self) -> Any:
        """The output Labels layer (created over the image when first needed)."""
        return self._labels

    @labels_layer.setter
    def labels_layer(self, layer: Any) -> None:
        self._require_idle("change the labels layer")
        needed = None if self._image is None else spatial_shape(self._image)
        if layer is not None and needed is not None and tuple(layer.data.shape) != needed:
            raise ValueError(
                f"Labels layer {layer.name!r} has shape {tuple(layer.data.shape)}, but the image "
                f"needs {needed}."
            )
        self._labels = layer
        self.layers_changed.emit()

    @property
    def points_layer(self) -> Any:
        """The Points layer whose points are clicks (features ``obj_id``, ``positive``)."""
        return None if self._prompts is None else self._prompts.points

    @property
    def boxes_layer(self) -> Any:
        """The Shapes layer whose rectangles are box prompts (feature ``obj_id``)."""
        return None if self._prompts is None else self._prompts.boxes

    @property
    def frame_axis(self) -> int | None:
        """The followed axis (``None`` for 2D images; chosen by the user for 4D data)."""
        if self._image is None or len(spatial_shape(self._image)) == 2:
            return None
        return self._frame_axis

    @frame_axis.setter
    def frame_axis(self, axis: int) -> None:
        self._require_idle("change the followed axis")
        n_axes = 0 if self._image is None else len(spatial_shape(self._image)) - 2
        if not 0 <= int(axis) < max(1, n_axes):
            raise ValueError(f"frame_axis must be one of the {n_axes} non-spatial axes, got {axis}")
        self._frame_axis = int(axis)
        self.layers_changed.emit()
        self._schedule_sync()

    @property
    def overwrite(self) -> bool:
        """Whether masks may overwrite pixels of other label values (default False)."""
        return self._overwrite

    @overwrite.setter
    def overwrite(self, value: bool) -> None:
        if bool(value) != self._overwrite:
            self._overwrite = bool(value)
            self.overwrite_changed.emit(self._overwrite)

    @property
    def current_object(self) -> int:
        """Label value given to new clicks and boxes (1 to 2**31 - 1)."""
        return self._current_object

    @current_object.setter
    def current_object(self, obj_id: int) -> None:
        self._current_object = int(np.clip(int(obj_id), 1, MAX_LABEL))
        self._apply_defaults()

    @property
    def positive(self) -> bool:
        """Polarity of new clicks (Shift-click gives the other one)."""
        return self._positive

    @positive.setter
    def positive(self, value: bool) -> None:
        self._positive = bool(value)
        self._apply_defaults()

    @property
    def contrast_mode(self) -> str:
        """How frames are scaled for the model: ``"limits"`` (the image layer's contrast
        limits; default) or ``"auto"`` (percentiles of each frame)."""
        return self._contrast_mode

    @contrast_mode.setter
    def contrast_mode(self, mode: str) -> None:
        if mode not in CONTRAST_MODES:
            raise ValueError(f"contrast_mode must be one of {CONTRAST_MODES}; got {mode!r}.")
        if mode != self._contrast_mode:
            self._contrast_mode = mode
            self._schedule_sync()

    @property
    def precision(self) -> str:
        """How the model computes: ``"auto"`` (default: bfloat16 on CUDA and on CPUs with
        bfloat16 units, float32 elsewhere, decided by measurement), ``"fp32"`` (strict float32,
        the reference's numbers), ``"fast"`` (float32 results) or ``"bf16"``; see
        :mod:`napari_sam2.models.precision`. :attr:`precision_in_use` tells what ``"auto"``
        became and why.

        Applies to the loaded model and to models loaded later. Refused while a propagation
        runs; while another job runs, it is applied as soon as the jobs are done. Cached image
        features are dropped, so every mask is computed under one precision.
        """
        return self._precision

    @precision.setter
    def precision(self, mode: str) -> None:
        from ..models.precision import PRECISIONS

        if mode not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {mode!r}.")
        if mode == self._precision:
            return
        self._require_idle("change the precision")
        self._precision = mode
        self.precision_changed.emit(mode)
        if not self._jobs.busy:
            self._apply_precision()

    @property
    def precision_in_use(self) -> str:
        """The loaded model's precision and why (``"bf16: this CPU has AMX (...)"``)."""
        return self._precision_in_use

    def _show_precision_in_use(self) -> None:
        model = self._model
        if model is None:
            text = "no model loaded"
        else:
            text = f"{model.precision}: {getattr(model, 'precision_reason', 'chosen explicitly')}"
        self._precision_in_use = text
        self.precision_in_use_changed.emit(text)

    @property
    def pre_encode(self) -> bool:
        """Encode the slices next to the current one in the background (default False)."""
        return self._pre.enabled

    @pre_encode.setter
    def pre_encode(self, on: bool) -> None:
        changed = bool(on) != self._pre.enabled
        self._pre.enabled = bool(on)
        if changed:
            self.pre_encode_changed.emit(self._pre.enabled)
        self._refresh_pre_encoder()

    @property
    def pre_encoder(self) -> Any:
        """The running :class:`~napari_sam2.core.video.pre_encoder.PreEncoder`, or ``None``."""
        return self._pre.encoder

    # ------------------------------------------------------------------ lifetime
    def shutdown(self) -> None:
        """Cancel any run and stop listening to the viewer and the prompt layers (idempotent)."""
        if not self._alive:
            return
        self.cancel()
        self.cancel_precompute()
        self._run_watch.close()
        self._precompute_watch.close()
        self._alive = False
        self._pre.close()
        self._viewer.dims.events.current_step.disconnect(self._refresh_pre_encoder)
        for prompts in self._prompt_sets.values():
            prompts.disconnect()
        self._prompts = None
        layers = self._viewer.layers
        layers.events.inserted.disconnect(self._on_layer_inserted)
        layers.events.removed.disconnect(self._on_layer_removed)

    # ------------------------------------------------------------------ model
    def set_model(
        self, name_or_path: str, config: str | None = None, device: str = "auto",
        image_size: int | None = None,
    ) -> Any:
        """Load a model (official name or checkpoint file) on a worker; returns the worker.

        ``image_size`` defaults to :attr:`image_size` (1024). Refused while a propagation runs.
        :attr:`model_loaded` is emitted when it is ready.
        """
        self._require_idle("change the model")
        size = self.image_size if image_size is None else int(image_size)
        worker = load_model_worker(str(name_or_path), config, device, size)
        worker.returned.connect(partial(self._model_ready, str(name_or_path)))
        self._show_status(f"loading {name_or_path} …")
        return self._jobs.submit(worker)

    def _model_ready(self, name: str, model: Any) -> None:
        from ..core.video.predictor import SAM2VideoPredictor
        from ..models.precision import set_precision

        if isinstance(model, Failure):
            self._show_status(self._model_text)
            self._report("Could not load the model", model.error)
            return
        self._drop_session()
        set_precision(model, self._precision)
        model.precision_requested = self._precision
        # A click on any frame, including a tracked one, makes it a conditioning frame: the
        # correction is then kept when the object is propagated again.
        self._model = model
        self._predictor = SAM2VideoPredictor(model, add_all_frames_to_correct_as_cond=True)
        self._model_text = f"{name} on {model.device} ({model.image_size} px)"
        self._show_status(self._model_text)
        self._show_precision_in_use()
        self.model_loaded.emit(model)
        if self._image is not None:
            self._activate()

    def _apply_precision(self) -> None:
        """Give the loaded model the chosen precision (no job may be running)."""
        model = self._model
        if model is None or getattr(model, "precision_requested", None) == self._precision:
            return
        from ..models.precision import set_precision

        self._pre.close()  # no forward pass may run while the hooks change
        set_precision(model, self._precision)
        model.precision_requested = self._precision
        self._show_precision_in_use()
        if self._session is not None:
            self._session.state.feature_cache.clear()  # computed under the old precision
        self._refresh_pre_encoder()

    # ------------------------------------------------------------------ prompts
    def new_object(self) -> int:
        """Make the next free label value the current object; returns it."""
        used = set() if self._prompts is None else self._prompts.object_ids()
        self.current_object = max([labels_max(self._labels), *used]) + 1
        return self.current_object

    def toggle_positive(self) -> None:
        """Switch the polarity of new clicks (the N key)."""
        self.positive = not self.positive

    def add_point(
        self, position: Sequence[float], positive: bool | None = None, obj_id: int | None = None
    ) -> None:
        """Add a click at ``position`` (data coordinates of the image, or ``(y, x)`` on the
        current slice); defaults: the current polarity and object."""
        prompts = self._prompt_layers()
        coords = plane_coords(position, self._current_indices())
        obj_id = self.current_object if obj_id is None else obj_id
        with prompts.defaults(obj_id, self.positive if positive is None else positive):
            prompts.points.add(coords[None])

    def add_box(
        self, corner: Sequence[float], opposite: Sequence[float], obj_id: int | None = None
    ) -> None:
        """Add a box prompt from two opposite corners (as :meth:`add_point` positions)."""
        prompts = self._prompt_layers()
        current = self._current_indices()
        verts = box_vertices(plane_coords(corner, current), plane_coords(opposite, current))
        with prompts.defaults(self.current_object if obj_id is None else obj_id):
            prompts.boxes.add_rectangles(verts)

    def _apply_defaults(self) -> None:
        """Give the current object and polarity to the prompt layers and the labels brush."""
        obj_id, positive = self._current_object, self._positive
        self.prompt_defaults_changed.emit(obj_id, positive)
        if self._prompts is not None:
            self._prompts.set_defaults(obj_id, positive)
        if self._labels is not None:
            self._labels.selected_label = obj_id

    # ------------------------------------------------------------------ propagation
    def propagate(self, direction: str = "both", frame_range: tuple[int, int] | None = None) -> Any:
        """Track every object through the stack on a worker; returns the worker.

        ``direction``: ``"forward"``, ``"backward"`` or ``"both"``; ``frame_range``:
        ``(first, last)`` inclusive, or ``None`` for the whole stack. Each frame is written into
        the Labels layer as it arrives (one undo step for the run);
        :attr:`propagation_finished` is emitted at the end.
        """
        if not self._alive:
            raise RuntimeError("Cannot propagate: the SAM 2 widget was closed; open it again.")
        if self._run is not None:
            raise RuntimeError("A propagation is already running; cancel it or wait.")
        if self._model is None or self._image is None:
            raise RuntimeError("Choose an image and load a model first.")
        if self.frame_axis is None:
            raise RuntimeError("A 2D image has nothing to propagate through.")
        nothing = "Nothing to propagate: click an object (or draw a box) first."
        if self._prompts is None:
            raise ValueError(nothing)
        session = self.sync()
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
        self._run_watch = DataWatch(
            (self._image, labels), partial(self._on_data_replaced, "the propagation")
        )
        worker.started.connect(self._on_run_started)
        self.running_changed.emit(True)
        self.progress_changed.emit(0, self._run.total)
        return self._jobs.submit(worker)

    def cancel(self) -> None:
        """Stop the propagation after the frame being computed; frames written so far stay."""
        run = self._run
        if run is None:
            return
        run.cancel()
        if not run.started and self._jobs.remove(run.worker):
            run.abandon()

    def _on_run_started(self) -> None:
        self.propagation_started.emit()

    def _on_frame(self, frame_idx: int, done: int) -> None:
        self.progress_changed.emit(done, self._run.total if self._run else done)
        self.frame_propagated.emit(frame_idx)

    def _on_run_done(self, run: PropagationRun, completed: bool) -> None:
        if self._run is run:
            self._run = None
            self._run_watch.close()
        self.running_changed.emit(False)
        if completed:
            self.progress_changed.emit(run.total, run.total)
        self.propagation_finished.emit(completed)
        waiting, self._adopt_after_run = self._adopt_after_run, None
        if (waiting is not None and self._alive and self._image is None and self._run is None
                and waiting in self._viewer.layers):
            self.image_layer = waiting

    # ------------------------------------------------------------------ embeddings on disk
    @property
    def store_status(self) -> str:
        """The embedding store's status line, e.g. "312/312 slices encoded (cache: 2.4 GB)"."""
        return self._store_status

    @property
    def is_precomputing(self) -> bool:
        return self._precompute is not None

    def precompute_embeddings(self) -> Any:
        """Encode every slice of the stack whose features are not in its embedding store, on
        a worker; returns the worker. Cancel with :meth:`cancel_precompute`; a later run
        resumes where it stopped (and so does a later napari session).

        Clicks and other jobs go first: the run steps aside after the slice it is encoding
        when a prompt changes or a job is queued, and continues after them by itself.
        """
        if self._precompute is not None:
            raise RuntimeError("Embeddings are being precomputed already.")
        self._require_idle("precompute embeddings")
        if self._model is None or self._image is None:
            raise RuntimeError("Choose an image and load a model first.")
        session = self._ensure_session()
        if session is None:
            raise RuntimeError("The prompts are being updated; try again in a moment.")
        self._pre.close()  # one encoder at a time
        handle = CancelHandle()
        worker = precompute_worker(session, handle, self._others_waiting)
        worker._sam2_session = session
        self._precompute = PrecomputeRun(
            worker, handle, session.num_frames, on_step=self._on_precompute_step,
            on_done=self._on_precompute_done,
            on_error=partial(self._report, "Precomputing embeddings failed"),
        )
        self._precompute_watch = DataWatch(
            (self._image,), partial(self._on_data_replaced, "precomputing embeddings")
        )
        self.precompute_running.emit(True)
        self.precompute_progress.emit(0, session.num_frames)
        return self._jobs.submit(worker)

    def cancel_precompute(self) -> None:
        """Stop precomputing after the slice being encoded (it is kept)."""
        run = self._precompute
        if run is None:
            return
        run.cancel()
        if not run.started and self._jobs.remove(run.worker):
            run.abandon()

    def _on_precompute_step(self, done: int, total: int) -> None:
        if self._alive:
            self.precompute_progress.emit(done, total)

    def _others_waiting(self) -> bool:
        """Whether prompt changes or jobs wait for the precompute run (read on its thread)."""
        return bool(self._pending) or self._jobs.waiting > 0

    def _on_precompute_done(self, run: PrecomputeRun, completed: bool) -> None:
        if self._precompute is run:
            self._precompute = None
            self._precompute_watch.close()
        if not self._alive:
            return
        resume = run.stepped_aside and self._session is not None and self._run is None
        self.precompute_running.emit(False)
        self._refresh_store_status()
        if resume:  # it made way for a click or a job: continue after them
            try:
                self.precompute_embeddings()
            except (RuntimeError, ValueError):
                pass

    def _refresh_store_status(self) -> None:
        """Read the store's status (main thread, no job running: the store is not written)."""
        session = self._session
        if not self._alive or session is None or not session.has_state:
            return
        try:
            text = describe_store(session.store_status())
        except Exception as err:  # noqa: BLE001 - a status line must never break the widget
            text = f"embeddings: status unknown ({err})"
        if text != self._store_status:
            self._store_status = text
            self.store_status_changed.emit(text)

    # ------------------------------------------------------------------ segment everything
    def segment_everything(self, **options: Any) -> Any:
        """Segment every object on the current slice into new label values (after the
        largest one in use), on a worker; existing labels are never overwritten. ``options``
        go to :class:`~napari_sam2.core.image.mask_generator.SAM2AutomaticMaskGenerator`
        (``points_per_side`` defaults to :attr:`points_per_side`)."""
        self._require_idle("segment everything")
        if self._model is None or self._image is None:
            raise RuntimeError("Choose an image and load a model first.")
        session = self._ensure_session()
        if session is None:
            raise RuntimeError("The prompts are being updated; try again in a moment.")
        frame_idx = self.current_frame()
        with frame_read_lock(session.frames):  # the pre-encoder may be reading too
            frame = session.frames.read(frame_idx)
        options = {"points_per_side": int(self.points_per_side), **options}
        worker = everything_worker(self._model, frame, options)
        worker.returned.connect(
            partial(self._write_everything, self._image, self._geometry.placement, frame_idx)
        )
        return self._jobs.submit(worker)

    def _write_everything(self, image: Any, placement: Any, frame_idx: int, found: Any) -> None:
        if isinstance(found, Failure):
            self._report("Segment everything failed", found.error)
            return
        if self._image is None or self._image is not image:
            return
        layer = self._ensure_labels()
        used = set() if self._prompts is None else self._prompts.object_ids()
        offset = max([labels_max(layer), *used])
        try:
            written = write_new_labels(layer, placement, frame_idx, found, offset)
        except ValueError as err:
            self._report("Segment everything", err)
            return
        self.everything_finished.emit(written)

    # ------------------------------------------------------------------ layers
    def _prompt_layers(self) -> PromptLayers:
        """The image's prompt layers, created (or found again) and listened to."""
        if not self._alive:
            raise RuntimeError("The SAM 2 widget was closed; open it again to add prompts.")
        if self._image is None:
            raise RuntimeError("Choose an image layer first.")
        if self._prompts is None:
            uid = self._image.unique_id
            self._prompts = self._prompt_sets.get(uid) or PromptLayers(
                self._viewer, self._image, self._schedule_sync, self.toggle_positive,
                self.new_object, self.current_object, self.positive,
            )
            self._prompt_sets[uid] = self._prompts
        self._prompts.ensure()
        self._prompts.set_defaults(self.current_object, self.positive)
        return self._prompts

    def _activate(self) -> None:
        """Prompt layers for the image, the points layer active (in add mode)."""
        if not self._alive:
            return
        self._viewer.layers.selection.active = self._prompt_layers().points
        self._schedule_sync()

    def _ensure_labels(self) -> Any:
        if self._labels is None or self._labels not in self._viewer.layers:
            active = self._viewer.layers.selection.active
            layer = make_labels_layer(self._image)
            layer.metadata["napari_sam2"] = {"role": "masks", "image": self._image.name}
            self._viewer.add_layer(layer)
            self._labels = layer
            self.layers_changed.emit()
            if active is not None and active in self._viewer.layers:
                self._viewer.layers.selection.active = active
        return self._labels

    def _on_layer_inserted(self, event: Any) -> None:
        if not self._alive:
            return
        self.layers_changed.emit()
        added = getattr(event, "value", None)
        if self._image is None and isinstance(added, Image):  # the first image: take it
            if self._run is not None:  # the run of a deleted image is stopping: after it
                self._adopt_after_run = added
                return
            try:
                self.image_layer = added
            except Exception as err:  # noqa: BLE001 - reported to the user
                self._report("", err)

    def _on_layer_removed(self, event: Any) -> None:
        if not self._alive:
            return
        layer = event.value
        what = None
        if self._image is not None and layer == self._image:
            what = f"The image layer {layer.name!r} was deleted"
        elif self._labels is not None and layer == self._labels:
            what = f"The labels layer {layer.name!r} was deleted"
            self._labels = None
        elif self._prompts is not None and self._prompts.forget(layer):
            what = f"The prompt layer {layer.name!r} was deleted"
        if what is not None and self._run is not None and not self._run.stopped:
            self.cancel()  # one warning: the other layers going too (a closing viewer) add none
            self.notice.emit("warning", f"{what}; the propagation was stopped.")
        if self._image is not None and layer == self._image:
            self._drop_image()
        self.layers_changed.emit()

    def _on_data_replaced(self, job: str, layer: Any) -> None:
        """A layer that ``job`` reads or writes was given new data: stop the job."""
        if not self._alive:
            return
        if job == "the propagation":
            if self._run is None or self._run.stopped:
                return
            self.cancel()
            kept = "the frames written so far stay" if layer is not self._labels else (
                "what it wrote is in the data that was replaced")
        else:
            if self._precompute is None:
                return
            self.cancel_precompute()
            kept = "the slices encoded so far stay on disk"
        self.notice.emit(
            "warning", f"The layer {layer.name!r} was given new data; {job} was stopped "
            f"({kept}). Start it again to use the new data."
        )

    def _drop_image(self) -> None:
        self.cancel_precompute()  # its slices belong to the image that went
        if self._prompts is not None:
            self._prompts.disconnect()
        self._prompt_sets.pop(self._image.unique_id, None)
        self._image, self._prompts, self._pending = None, None, {}
        self._drop_session()

    def _drop_session(self) -> None:
        self._pre.close()
        session, self._session, self._session_key = self._session, None, None
        self._pending = {}
        if session is not None:
            active = self._jobs.active
            if active is not None and getattr(active, "_sam2_session", None) is session:
                active.finished.connect(session.close)  # close it once its worker is done
            else:
                session.close()

    # ------------------------------------------------------------------ session and sync
    def _current_indices(self) -> tuple[int, ...]:
        """The viewer's position in the image's data, one index per non-RGB axis."""
        shape = spatial_shape(self._image)
        point = np.asarray(self._image.world_to_data(self._viewer.dims.point), dtype=float)
        point = point[-len(shape):]
        return tuple(int(np.clip(np.round(v), 0, n - 1)) for v, n in zip(point, shape))

    def current_frame(self) -> int:
        """Index of the current slice along the followed axis (0 for a 2D image)."""
        axis = self.frame_axis
        return 0 if axis is None else self._current_indices()[axis]

    def _ensure_session(self) -> SegmentationSession | None:
        """The session for the image as it is now followed; ``None`` if it must wait."""
        geometry = StackGeometry.of(self._image, self._frame_axis, self._current_indices())
        limits = None
        if self._contrast_mode == "limits":
            limits = tuple(float(v) for v in self._image.contrast_limits)
        # The data's identity too: an image given new data of the same shape is a new stack.
        key = (self._image.unique_id, id(self._image.data), geometry, limits, id(self._model))
        if self._session is not None and key == self._session_key:
            return self._session
        active = self._jobs.active
        if active is not None and getattr(active, "_sam2_session", None) is not None:
            self._resync_when_idle = True
            return None
        self._drop_session()
        kwargs = {} if limits is None else {"contrast_limits": limits}
        frames = geometry.open_frames(self._image, **kwargs)
        self._session, self._session_key, self._geometry = (
            SegmentationSession(self._predictor, frames), key, geometry,
        )
        return self._session

    def _schedule_sync(self) -> None:
        if not self._sync_scheduled:
            self._sync_scheduled = True
            QTimer.singleShot(0, self.sync)

    def sync(self) -> SegmentationSession | None:
        """Read the prompt layers now and queue predictions for what changed; returns the
        session, or ``None`` when there is none yet (no image, prompts or model; or a job
        still uses the previous one)."""
        self._sync_scheduled = False
        if self._image is None or self._prompts is None:
            return None
        if self._model is None:
            if self._prompts.object_ids() and not self.hint_shown:
                self.hint_shown = True
                self.notice.emit(
                    "info", "Load a model (Model ▸ Load model) to see your objects' masks."
                )
            return None
        try:
            session = self._ensure_session()
            if session is None:
                return None
            prompts = read_prompts(self._prompts.points, self._prompts.boxes, self._geometry)
        except Exception as err:  # noqa: BLE001 - the core's message, shown to the user
            self._notify_once(str(err))
            return None
        changes, errors = session.set_prompts(prompts)
        for message in errors:
            self._notify_once(message)
        if not errors:
            self._shown_errors.clear()
        self._pending.update(changes)
        self._jobs.poke()
        self._refresh_pre_encoder()
        return session

    def _next_prediction(self) -> Any:
        if not self._pending or self._session is None:
            return None
        changes, self._pending = self._pending, {}
        session = self._session
        worker = apply_worker(session, changes)
        worker._sam2_session = session
        worker.yielded.connect(partial(self._on_masks, session))
        return worker

    def _on_masks(self, session: SegmentationSession, item: Any) -> None:
        if isinstance(item, Failure):
            session.forget_unapplied()  # so that the next edit tries them again
            self._report("Could not segment", item.error)
            return
        if session is not self._session or self._image is None:
            return
        frame_idx, masks = item
        writer = LabelsWriter(self._ensure_labels(), self._geometry.placement, self._overwrite)
        try:
            writer.write(frame_idx, masks)
        except ValueError as err:  # e.g. a label value the layer's dtype cannot hold
            self._report("Could not write the mask", err)
            return
        self.masks_updated.emit(frame_idx)

    def _on_busy(self, busy: bool) -> None:
        """Jobs started or all ended: a deferred precision, the pre-encoder, a deferred sync."""
        if not busy:
            self._apply_precision()
        self._pre.jobs_busy(busy)
        if not busy:
            self._refresh_pre_encoder()
            self._refresh_store_status()
        self.busy_changed.emit(busy)
        if not busy and self._resync_when_idle:
            self._resync_when_idle = False
            self._schedule_sync()

    # ------------------------------------------------------------------ pre-encoding
    def _refresh_pre_encoder(self, event: Any = None) -> None:
        """Point the pre-encoder at the slice the viewer shows, if that slice is one of the
        current session's (for 4D data: the other axes are where the session was opened)."""
        if not self._alive or not self._pre.enabled:
            return
        session = self._session
        if session is not None and (self._image is None or StackGeometry.of(
            self._image, self._frame_axis, self._current_indices()
        ) != self._geometry):
            session = None
        self._pre.follow(session, 0 if session is None else self.current_frame())

    # ------------------------------------------------------------------ reporting
    def _show_status(self, text: str) -> None:
        self._status = text
        self.status_changed.emit(text)

    def _report(self, context: str, err: BaseException) -> None:
        self.failed.emit(context, err)

    def _notify_once(self, message: str) -> None:
        if message not in self._shown_errors:
            self._shown_errors.add(message)
            self.notice.emit("error", message)

    def _require_idle(self, what: str) -> None:
        if not self._alive:
            raise RuntimeError(f"Cannot {what}: the SAM 2 widget was closed; open it again.")
        if self._run is not None:
            raise RuntimeError(f"Cannot {what} while a propagation runs; cancel it first.")
