"""Behaviour of the dock widget, separate from its layout: layers, model, session, jobs.

:class:`WidgetController` is mixed into :class:`~napari_sam2.widgets._widget.SAM2Widget`; it
holds the state (image, labels and prompt layers, the model and the
:class:`~napari_sam2.widgets._session.SegmentationSession`) and the public scripting methods,
and calls a few hooks the widget provides (notifications, progress, UI state, signals).
Everything here runs on the main thread; model calls go to workers via the
:class:`~napari_sam2.widgets._jobs.JobQueue`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from ._jobs import JobQueue
from ._labels_writer import LabelsWriter
from ._layers import StackGeometry, make_labels_layer, read_prompts, spatial_shape
from ._prompting import PromptLayers
from ._session import SegmentationSession
from ._workers import Failure, apply_worker, load_model_worker

__all__ = ["WidgetController"]


class WidgetController:
    """State and scripting API of the SAM 2 dock widget (see the widget's docstring)."""

    def __init__(self, viewer: Any) -> None:
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
        self._run: Any = None  # the PropagationRun in progress
        self._frame_axis = 0
        self._overwrite = False
        self._refreshing = False
        self._sync_scheduled = False
        self._resync_when_idle = False
        self._shown_errors: set[str] = set()
        self._hinted = False
        self._status_text = "no model loaded"
        self._precision = "fast"
        self._jobs = JobQueue(self._next_prediction, self)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ public state
    @property
    def viewer(self) -> Any:
        return self._viewer

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
            self._refresh_layer_combos()
            return
        if self._frame_axis >= max(1, len(spatial_shape(layer)) - 2):
            self._frame_axis = 0
        for candidate in self._viewer.layers:  # the labels made for this image before
            meta = candidate.metadata.get("napari_sam2", {})
            if meta.get("role") == "masks" and meta.get("image") == layer.name and (
                tuple(candidate.data.shape) == spatial_shape(layer)
            ):
                self._labels = candidate
        self._refresh_layer_combos()
        if self._model is not None:
            self._activate()

    @property
    def precision(self) -> str:
        """How the model computes: ``"fast"`` (float32 results; default), ``"fp32"`` (strict
        float32) or ``"bf16"`` (faster, approximate); see :mod:`napari_sam2.models.precision`.

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
        self._show_precision(mode)
        if not self._jobs.busy:
            self._apply_precision()

    def _apply_precision(self) -> None:
        """Give the loaded model the chosen precision (no job may be running)."""
        model = self._model
        if model is None or getattr(model, "precision", None) == self._precision:
            return
        from ..models.precision import set_precision

        self._close_pre_encoder()  # no forward pass may run while the hooks change
        set_precision(model, self._precision)
        if self._session is not None:
            self._session.state.feature_cache.clear()  # computed under the old precision
        self._refresh_pre_encoder()

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
        self._refresh_layer_combos()

    @property
    def points_layer(self) -> Any:
        """The Points layer whose points are clicks (features ``obj_id``, ``positive``)."""
        return None if self._prompts is None else self._prompts.points

    @property
    def boxes_layer(self) -> Any:
        """The Shapes layer whose rectangles are box prompts (feature ``obj_id``)."""
        return None if self._prompts is None else self._prompts.boxes

    # ------------------------------------------------------------------ model
    def set_model(
        self, name_or_path: str, config: str | None = None, device: str = "auto",
        image_size: int | None = None,
    ) -> Any:
        """Load a model (official name or checkpoint file) on a worker; returns the worker.

        ``image_size`` defaults to the "image size" setting (1024). Refused while a
        propagation runs. :attr:`model_loaded` is emitted when it is ready.
        """
        self._require_idle("change the model")
        size = self._image_size() if image_size is None else int(image_size)
        worker = load_model_worker(str(name_or_path), config, device, size)
        worker.returned.connect(partial(self._model_ready, str(name_or_path)))
        self._status(f"loading {name_or_path} …")
        return self._jobs.submit(worker)

    def _model_ready(self, name: str, model: Any) -> None:
        from ..core.video.predictor import SAM2VideoPredictor

        if isinstance(model, Failure):
            self._status("no model loaded" if self._model is None else self._status_text)
            self._report("Could not load the model", model.error)
            return
        self._drop_session()
        from ..models.precision import set_precision

        set_precision(model, self._precision)
        # A click on any frame, including a tracked one, makes it a conditioning frame: the
        # correction is then kept when the object is propagated again.
        self._model = model
        self._predictor = SAM2VideoPredictor(model, add_all_frames_to_correct_as_cond=True)
        self._status_text = f"{name} on {model.device} ({model.image_size} px)"
        self._status(self._status_text)
        self.model_loaded.emit(model)  # type: ignore[attr-defined]
        if self._image is not None:
            self._activate()

    # ------------------------------------------------------------------ layers
    def _prompt_layers(self) -> PromptLayers:
        """The image's prompt layers, created (or found again) and listened to."""
        if self._image is None:
            raise RuntimeError("Choose an image layer first.")
        if self._prompts is None:
            uid = self._image.unique_id
            self._prompts = self._prompt_sets.get(uid) or PromptLayers(
                self._viewer, self._image, self._schedule_sync, self._toggle_positive,
                self.new_object, self.current_object, self.positive,
            )
            self._prompt_sets[uid] = self._prompts
        self._prompts.ensure()
        self._prompts.set_defaults(self.current_object, self.positive)
        return self._prompts

    def _activate(self) -> None:
        """Prompt layers for the image, the points layer active (in add mode)."""
        self._viewer.layers.selection.active = self._prompt_layers().points
        self._schedule_sync()

    def _ensure_labels(self) -> Any:
        if self._labels is None or self._labels not in self._viewer.layers:
            active = self._viewer.layers.selection.active
            layer = make_labels_layer(self._image)
            layer.metadata["napari_sam2"] = {"role": "masks", "image": self._image.name}
            self._viewer.add_layer(layer)
            self._labels = layer
            self._refresh_layer_combos()
            if active is not None and active in self._viewer.layers:
                self._viewer.layers.selection.active = active
        return self._labels

    def _drop_image(self) -> None:
        if self._prompts is not None:
            self._prompts.disconnect()
        self._prompt_sets.pop(self._image.unique_id, None)
        self._image, self._prompts, self._pending = None, None, {}
        self._drop_session()

    def _drop_session(self) -> None:
        self._close_pre_encoder()
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
        mode = self._contrast_mode()
        limits = tuple(float(v) for v in self._image.contrast_limits) if mode == "limits" else None
        key = (self._image.unique_id, geometry, limits, id(self._model))
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
            self._later(self._sync)

    def _sync(self) -> SegmentationSession | None:
        """Read the prompt layers, queue predictions for what changed."""
        self._sync_scheduled = False
        if self._image is None or self._prompts is None:
            return None
        if self._model is None:
            if self._prompts.object_ids() and not self._hinted:
                self._hinted = True
                self._notify_info("Load a model (Model ▸ Load model) to see your objects' masks.")
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

    def _notify_once(self, message: str) -> None:
        if message not in self._shown_errors:
            self._shown_errors.add(message)
            self._notify_error(message)

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
        self.masks_updated.emit(frame_idx)  # type: ignore[attr-defined]

    def _require_idle(self, what: str) -> None:
        if self._run is not None:
            raise RuntimeError(f"Cannot {what} while a propagation runs; cancel it first.")
