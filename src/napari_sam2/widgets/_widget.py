"""The napari dock widget: click objects, get masks, propagate them through the stack.

Scripting (the widget's public surface)::

    _, w = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 Segmentation")
    w.image_layer = viewer.layers["cells"]
    w.set_model("sam2.1_hiera_tiny", image_size=512)      # a worker; see w.model_loaded
    w.add_point((5, 120, 88))                              # (z, y, x) of the image's data
    w.add_point((5, 130, 90), positive=False)
    w.propagate("both")                                    # a worker; see w.propagation_finished
    w.cancel()

Everything slow runs on napari ``thread_worker``s, one at a time (``_jobs.py``); every layer
change happens here, on the main thread (``_labels_writer.py``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import notification_manager, show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QWidget

from ._actions import ActionsMixin
from ._controller import WidgetController
from ._ui import CHECKPOINT_FILE, INFER_CONFIG, NEW_LABELS, Controls
from ._layers import spatial_shape
from ._pre_encoding import PreEncodingMixin

__all__ = ["SAM2Widget"]


# what the core raises for bad input, files or data: reported by message alone
_EXPECTED = (ValueError, RuntimeError, KeyError, IndexError, TypeError, OSError)


def _devices() -> list[str]:
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


class SAM2Widget(ActionsMixin, PreEncodingMixin, WidgetController, QWidget):
    """SAM 2 dock widget. See the module docstring for scripted use."""

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

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        QWidget.__init__(self, parent)
        self._ui = Controls(self, _devices())
        WidgetController.__init__(self, napari_viewer)
        ui = self._ui
        ui.image.currentIndexChanged.connect(self._image_chosen)
        ui.labels.currentIndexChanged.connect(self._labels_chosen)
        ui.follow.currentIndexChanged.connect(self._follow_chosen)
        ui.model.activated.connect(self._model_chosen)
        ui.load.clicked.connect(self._load_clicked)
        ui.object.valueChanged.connect(lambda v: self._set_defaults(obj_id=v))
        ui.new_object.clicked.connect(self.new_object)
        ui.negative.toggled.connect(lambda neg: self._set_defaults(positive=not neg))
        ui.everything.clicked.connect(partial(self._guarded, self.segment_everything))
        for button, direction in zip(ui.propagate_buttons, ("backward", "both", "forward")):
            button.clicked.connect(partial(self._guarded, self._propagate_clicked, direction))
        ui.cancel.clicked.connect(self.cancel)
        ui.overwrite.toggled.connect(lambda on: setattr(self, "overwrite", on))
        ui.normalization.currentIndexChanged.connect(lambda _: self._schedule_sync())
        ui.precision.currentIndexChanged.connect(self._precision_chosen)
        ui.pre_encode.toggled.connect(lambda on: setattr(self, "pre_encode", on))
        self._jobs.busy_changed.connect(self._on_busy)
        napari_viewer.dims.events.current_step.connect(self._refresh_pre_encoder)
        layers = napari_viewer.layers
        layers.events.inserted.connect(self._refresh_layer_combos)
        layers.events.removed.connect(self._on_layer_removed)
        self._alive = True
        self._docked = False
        active = layers.selection.active
        self._refresh_layer_combos()
        if isinstance(active, Image):
            self.image_layer = active

    # ------------------------------------------------------------------ lifetime
    def event(self, event: QEvent) -> bool:
        """napari closes a dock widget by taking it out of its dock (``setParent(None)``), not
        by deleting it; then the widget stops its run and stops listening to the viewer."""
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif getattr(self, "_docked", False) and getattr(self, "_alive", False):
                self.shutdown()
        return super().event(event)

    def shutdown(self) -> None:
        """Cancel any run and disconnect from the viewer and the prompt layers (idempotent)."""
        if not self._alive:
            return
        self.cancel()
        self._alive = False
        self._close_pre_encoder()
        self._viewer.dims.events.current_step.disconnect(self._refresh_pre_encoder)
        for prompts in self._prompt_sets.values():
            prompts.disconnect()
        self._prompts = None
        layers = self._viewer.layers
        layers.events.inserted.disconnect(self._refresh_layer_combos)
        layers.events.removed.disconnect(self._on_layer_removed)

    # ------------------------------------------------------------------ properties
    @property
    def overwrite(self) -> bool:
        """Whether masks may overwrite pixels of other label values (default False)."""
        return self._overwrite

    @overwrite.setter
    def overwrite(self, value: bool) -> None:
        self._overwrite = bool(value)
        if self._ui.overwrite.isChecked() != self._overwrite:
            self._ui.overwrite.setChecked(self._overwrite)

    @property
    def current_object(self) -> int:
        """Label value given to new clicks and boxes."""
        return int(self._ui.object.value())

    @current_object.setter
    def current_object(self, obj_id: int) -> None:
        self._ui.object.setValue(int(obj_id))

    @property
    def positive(self) -> bool:
        """Polarity of new clicks (Shift-click gives the other one)."""
        return not self._ui.negative.isChecked()

    @positive.setter
    def positive(self, value: bool) -> None:
        self._ui.negative.setChecked(not value)

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
        self._refresh_layer_combos()  # the follow chooser and the frame-range limits
        self._schedule_sync()

    # ------------------------------------------------------------------ UI slots
    def _guarded(self, fn: Any, *args: Any) -> None:
        """Run a button's action; a refusal or core error becomes a notification."""
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - shown to the user, not swallowed silently
            self._report("", err)

    def _propagate_clicked(self, direction: str) -> None:
        ui = self._ui
        frame_range = (ui.first.value(), ui.last.value()) if ui.limit.isChecked() else None
        self.propagate(direction, frame_range)

    def _model_chosen(self, index: int) -> None:
        if self._ui.model.itemText(index) != CHECKPOINT_FILE:
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM 2 checkpoint", "", "PyTorch checkpoints (*.pt *.pth);;All files (*)"
        )
        if path:
            self._ui.model.insertItem(index, path)
            self._ui.model.setCurrentIndex(index)
        else:
            self._ui.model.setCurrentIndex(0)

    def _load_clicked(self) -> None:
        ui = self._ui
        name = ui.model.currentText()
        if name == CHECKPOINT_FILE:
            show_info("Choose a checkpoint file first.")
            return
        config = ui.config.currentText().strip()
        config = None if config in ("", INFER_CONFIG) else config
        self._guarded(
            self.set_model, name, config, ui.device.currentText(), int(ui.image_size.currentText())
        )

    def _image_chosen(self, index: int) -> None:
        if self._refreshing:
            return
        layer = self._ui.image.itemData(index)
        if layer is not None and layer != self._image:
            self._guarded(setattr, self, "image_layer", layer)

    def _labels_chosen(self, index: int) -> None:
        if self._refreshing:
            return
        layer = self._ui.labels.itemData(index)
        self._labels = layer if isinstance(layer, Labels) else None

    def _follow_chosen(self, index: int) -> None:
        if index >= 0 and not self._refreshing and index != self._frame_axis:
            self._guarded(setattr, self, "frame_axis", index)

    def _precision_chosen(self, index: int) -> None:
        mode = self._ui.precision.itemData(index)
        if mode != self._precision:
            try:
                self.precision = mode
            except Exception as err:  # noqa: BLE001 - e.g. refused during a propagation
                self._show_precision(self._precision)
                self._report("", err)

    def _show_precision(self, mode: str) -> None:
        combo = self._ui.precision
        combo.blockSignals(True)
        combo.setCurrentIndex(max(0, combo.findData(mode)))
        combo.blockSignals(False)

    def _on_busy(self, busy: bool) -> None:
        if not busy:
            self._apply_precision()
        self._pause_pre_encoder(busy)
        self.busy_changed.emit(busy)
        if not busy and self._resync_when_idle:
            self._resync_when_idle = False
            self._schedule_sync()

    def _set_running(self, running: bool) -> None:
        if not self._alive:
            return
        ui = self._ui
        for w in (ui.model, ui.device, ui.load, ui.image, ui.labels, ui.follow, ui.image_size,
                  ui.config, ui.normalization, ui.precision, ui.everything,
                  *ui.propagate_buttons):
            w.setEnabled(not running)
        ui.cancel.setEnabled(running)

    def _refresh_layer_combos(self, event: Any = None) -> None:
        """Fill the image, labels and follow-axis choosers from the viewer's layers."""
        if not self._alive:
            return
        self._refreshing = True
        try:
            ui, layers = self._ui, self._viewer.layers
            ui.fill_layers(ui.image, [la for la in layers if isinstance(la, Image)], self._image)
            shape = () if self._image is None else spatial_shape(self._image)
            fits = [la for la in layers if isinstance(la, Labels) and la.data.shape == shape]
            ui.fill_layers(ui.labels, fits, self._labels, first=NEW_LABELS)
            ui.show_axes(shape, self._frame_axis)
        finally:
            self._refreshing = False
        added = getattr(event, "value", None)
        if self._image is None and isinstance(added, Image):  # the first image: take it
            self._guarded(setattr, self, "image_layer", added)

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        what = None
        if self._image is not None and layer == self._image:
            what = f"The image layer {layer.name!r} was deleted"
        elif self._labels is not None and layer == self._labels:
            what = f"The labels layer {layer.name!r} was deleted"
            self._labels = None
        elif self._prompts is not None and self._prompts.forget(layer):
            what = f"The prompt layer {layer.name!r} was deleted"
        if what is not None and self._run is not None:
            self.cancel()
            show_warning(f"{what}; the propagation was stopped.")
        if self._image is not None and layer == self._image:
            self._drop_image()
        self._refresh_layer_combos()

    # ------------------------------------------------------------------ notifications
    def _notify_error(self, message: str) -> None:
        show_error(message)

    def _report(self, context: str, err: BaseException) -> None:
        """A failure as a notification: the core's message for the errors it raises on bad
        input or data; anything else (a bug) with its traceback, as napari reports errors."""
        if isinstance(err, _EXPECTED):
            show_error(f"{context}: {err}" if context else str(err))
        else:
            notification_manager.receive_error(type(err), err, err.__traceback__)

    def _notify_info(self, message: str) -> None:
        show_info(message)

    def _status(self, text: str) -> None:
        if not self._alive:
            return
        self._ui.model_status.setText(text)

    def _progress(self, value: int, maximum: int) -> None:
        if not self._alive:
            return
        self._ui.progress.setRange(0, max(1, maximum))
        self._ui.progress.setValue(value)

    def _later(self, fn: Any) -> None:
        QTimer.singleShot(0, fn)

    def _image_size(self) -> int:
        return int(self._ui.image_size.currentText())

    def _contrast_mode(self) -> str:
        return "limits" if self._ui.normalization.currentIndex() == 0 else "auto"

    def _points_per_side(self) -> int:
        return int(self._ui.points_per_side.value())

    def _show_object(self, obj_id: int, positive: bool) -> None:
        if not self._alive:
            return
        ui = self._ui
        for w in (ui.object, ui.negative):
            w.blockSignals(True)
        ui.object.setValue(obj_id)
        ui.negative.setChecked(not positive)
        for w in (ui.object, ui.negative):
            w.blockSignals(False)

    def _labels_max(self) -> int:
        if self._labels is None or not self._labels.data.size:
            return 0
        return int(np.max(self._labels.data))
