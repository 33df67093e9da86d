"""The napari dock widget: click objects, get masks, propagate them through the stack.

Scripting (the widget's public surface)::

    _, w = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 Segmentation")
    w.image_layer = viewer.layers["cells"]
    w.set_model("sam2.1_hiera_tiny", image_size=512)      # a worker; see w.model_loaded
    w.add_point((5, 120, 88))                              # (z, y, x) of the image's data
    w.add_point((5, 130, 90), positive=False)
    w.propagate("both")                                    # a worker; see w.propagation_finished
    w.cancel()
    w.precompute_embeddings()                              # every slice's features, to disk

:class:`SAM2Widget` is the view: it lays out the controls (``_ui.py``), owns a
:class:`~napari_sam2.widgets._controller.WidgetController` (:attr:`SAM2Widget.controller`) that
does the work, passes the user's choices to it and shows what it reports. Its scripting
methods and properties are the controller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari.layers import Image, Labels
from napari.utils.notifications import notification_manager, show_error, show_info, show_warning
from qtpy.QtCore import QEvent, Signal
from qtpy.QtWidgets import QFileDialog, QWidget

from ._controller import WidgetController
from ._layers import spatial_shape
from ._ui import CHECKPOINT_FILE, INFER_CONFIG, NEW_LABELS, Controls

__all__ = ["SAM2Widget"]


# what the core raises for bad input, files or data: reported by message alone
_EXPECTED = (ValueError, RuntimeError, KeyError, IndexError, TypeError, OSError)

_NOTIFY: dict[str, Callable[[str], Any]] = {
    "info": show_info, "warning": show_warning, "error": show_error,
}

# the controller's signals that are also the widget's
_FORWARDED = (
    "model_loaded", "masks_updated", "propagation_started", "frame_propagated",
    "propagation_finished", "everything_finished", "busy_changed",
)


def _devices() -> list[str]:
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def _forward(name: str, writable: bool = False) -> property:
    """A widget property that reads (and, if ``writable``, sets) ``controller.<name>``."""

    def get(widget: SAM2Widget) -> Any:
        return getattr(widget.controller, name)

    def put(widget: SAM2Widget, value: Any) -> None:
        setattr(widget.controller, name, value)

    member = getattr(WidgetController, name, None)
    return property(get, put if writable else None, doc=getattr(member, "__doc__", None))


class SAM2Widget(QWidget):
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

    viewer = _forward("viewer")
    model = _forward("model")
    session = _forward("session")
    busy = _forward("busy")
    is_running = _forward("is_running")
    image_layer = _forward("image_layer", writable=True)
    labels_layer = _forward("labels_layer", writable=True)
    points_layer = _forward("points_layer")
    boxes_layer = _forward("boxes_layer")
    frame_axis = _forward("frame_axis", writable=True)
    precision = _forward("precision", writable=True)
    precision_in_use = _forward("precision_in_use")
    pre_encode = _forward("pre_encode", writable=True)
    pre_encoder = _forward("pre_encoder")
    overwrite = _forward("overwrite", writable=True)
    current_object = _forward("current_object", writable=True)
    positive = _forward("positive", writable=True)
    store_status = _forward("store_status")
    is_precomputing = _forward("is_precomputing")

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._docked = False
        self._refreshing = False
        self._ui = Controls(self, _devices())
        #: Does the work; the widget shows its state and passes the user's choices to it.
        self.controller = WidgetController(napari_viewer)
        self._connect_controls()
        self._connect_controller()
        self._show_state()

    @property
    def _alive(self) -> bool:
        """False once the widget was shut down."""
        return self.controller.alive

    # ------------------------------------------------------------------ wiring
    def _connect_controls(self) -> None:
        """User input -> controller; the controller starts with the controls' settings."""
        ui, c = self._ui, self.controller
        ui.image.currentIndexChanged.connect(self._image_chosen)
        ui.labels.currentIndexChanged.connect(self._labels_chosen)
        ui.follow.currentIndexChanged.connect(self._follow_chosen)
        ui.model.activated.connect(self._model_chosen)
        ui.load.clicked.connect(self._load_clicked)
        ui.object.valueChanged.connect(lambda v: setattr(c, "current_object", v))
        ui.new_object.clicked.connect(lambda: c.new_object())
        ui.negative.toggled.connect(lambda neg: setattr(c, "positive", not neg))
        ui.everything.clicked.connect(lambda: self._guarded(c.segment_everything))
        for button, direction in zip(ui.propagate_buttons, ("backward", "both", "forward")):
            button.clicked.connect(
                lambda _=False, d=direction: self._guarded(self._propagate_clicked, d)
            )
        ui.cancel.clicked.connect(lambda: c.cancel())
        ui.precompute.clicked.connect(lambda: self._guarded(c.precompute_embeddings))
        ui.precompute_cancel.clicked.connect(lambda: c.cancel_precompute())
        ui.overwrite.toggled.connect(lambda on: setattr(c, "overwrite", on))
        ui.normalization.currentIndexChanged.connect(self._normalization_chosen)
        ui.image_size.currentTextChanged.connect(self._image_size_chosen)
        ui.points_per_side.valueChanged.connect(lambda n: setattr(c, "points_per_side", int(n)))
        ui.precision.currentIndexChanged.connect(self._precision_chosen)
        ui.pre_encode.toggled.connect(lambda on: setattr(c, "pre_encode", on))
        self._image_size_chosen(ui.image_size.currentText())
        self._normalization_chosen(ui.normalization.currentIndex())
        c.points_per_side = int(ui.points_per_side.value())

    def _connect_controller(self) -> None:
        """Controller -> the widget's signals and controls."""
        c = self.controller
        for name in _FORWARDED:
            getattr(c, name).connect(getattr(self, name))
        c.status_changed.connect(self._show_status)
        c.progress_changed.connect(self._show_progress)
        c.running_changed.connect(self._show_running)
        c.prompt_defaults_changed.connect(self._show_defaults)
        c.layers_changed.connect(self._refresh_layer_combos)
        c.precision_changed.connect(self._show_precision)
        c.precision_in_use_changed.connect(self._show_precision_in_use)
        c.pre_encode_changed.connect(self._show_pre_encode)
        c.overwrite_changed.connect(self._show_overwrite)
        c.precompute_progress.connect(self._show_precompute_progress)
        c.precompute_running.connect(self._show_precomputing)
        c.store_status_changed.connect(self._show_store_status)
        c.notice.connect(self._notify)
        c.failed.connect(self._report)

    def _show_state(self) -> None:
        """Show everything the controller holds now."""
        c = self.controller
        self._show_status(c.status)
        self._show_defaults(c.current_object, c.positive)
        self._show_precision(c.precision)
        self._show_precision_in_use(c.precision_in_use)
        self._show_pre_encode(c.pre_encode)
        self._show_overwrite(c.overwrite)
        self._show_running(c.is_running)
        self._show_precomputing(c.is_precomputing)
        self._show_store_status(c.store_status)
        self._refresh_layer_combos()

    # ------------------------------------------------------------------ lifetime
    def event(self, event: QEvent) -> bool:
        """napari closes a dock widget by taking it out of its dock (``setParent(None)``), not
        by deleting it; then the widget stops its run and stops listening to the viewer."""
        if event.type() == QEvent.Type.ParentChange:
            controller = getattr(self, "controller", None)
            if self.parent() is not None:
                self._docked = True
            elif getattr(self, "_docked", False) and controller is not None and controller.alive:
                self.shutdown()
        return super().event(event)

    def shutdown(self) -> None:
        """Cancel any run and disconnect from the viewer and the prompt layers (idempotent)."""
        self.controller.shutdown()

    # ------------------------------------------------------------------ scripting
    def set_model(
        self, name_or_path: str, config: str | None = None, device: str = "auto",
        image_size: int | None = None,
    ) -> Any:
        """Load a model (official name or checkpoint file) on a worker; returns the worker.

        ``image_size`` defaults to the "image size" setting (1024). Refused while a
        propagation runs. :attr:`model_loaded` is emitted when it is ready.
        """
        return self.controller.set_model(name_or_path, config, device, image_size)

    def new_object(self) -> int:
        """Make the next free label value the current object; returns it."""
        return self.controller.new_object()

    def add_point(
        self, position: Sequence[float], positive: bool | None = None, obj_id: int | None = None
    ) -> None:
        """Add a click at ``position`` (data coordinates of the image, or ``(y, x)`` on the
        current slice); defaults: the current polarity and object."""
        self.controller.add_point(position, positive, obj_id)

    def add_box(
        self, corner: Sequence[float], opposite: Sequence[float], obj_id: int | None = None
    ) -> None:
        """Add a box prompt from two opposite corners (as :meth:`add_point` positions)."""
        self.controller.add_box(corner, opposite, obj_id)

    def propagate(self, direction: str = "both", frame_range: tuple[int, int] | None = None) -> Any:
        """Track every object through the stack on a worker; returns the worker.

        ``direction``: ``"forward"``, ``"backward"`` or ``"both"``; ``frame_range``:
        ``(first, last)`` inclusive, or ``None`` for the whole stack. Each frame is written into
        the Labels layer as it arrives (one undo step for the run);
        :attr:`propagation_finished` is emitted at the end.
        """
        return self.controller.propagate(direction, frame_range)

    def cancel(self) -> None:
        """Stop the propagation after the frame being computed; frames written so far stay."""
        self.controller.cancel()

    def precompute_embeddings(self) -> Any:
        """Encode every slice whose features are not on disk yet, on a worker (progress,
        cancel, resumes); returns the worker. :attr:`store_status` says how far it got."""
        return self.controller.precompute_embeddings()

    def cancel_precompute(self) -> None:
        """Stop precomputing after the slice being encoded."""
        self.controller.cancel_precompute()

    def segment_everything(self, **options: Any) -> Any:
        """Segment every object on the current slice into new label values (after the
        largest one in use), on a worker; existing labels are never overwritten. ``options``
        go to :class:`~napari_sam2.core.image.mask_generator.SAM2AutomaticMaskGenerator`."""
        return self.controller.segment_everything(**options)

    def current_frame(self) -> int:
        """Index of the current slice along the followed axis (0 for a 2D image)."""
        return self.controller.current_frame()

    # ------------------------------------------------------------------ user input
    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a control's action; a refusal or core error becomes a notification."""
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - shown to the user, not swallowed silently
            self._report("", err)

    def _propagate_clicked(self, direction: str) -> None:
        ui = self._ui
        frame_range = (ui.first.value(), ui.last.value()) if ui.limit.isChecked() else None
        self.controller.propagate(direction, frame_range)

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
            self.controller.set_model, name, config, ui.device.currentText(),
            int(ui.image_size.currentText()),
        )

    def _image_chosen(self, index: int) -> None:
        if self._refreshing:
            return
        layer = self._ui.image.itemData(index)
        if layer is not None and layer != self.controller.image_layer:
            self._guarded(setattr, self.controller, "image_layer", layer)

    def _labels_chosen(self, index: int) -> None:
        if self._refreshing:
            return
        layer = self._ui.labels.itemData(index)
        self._guarded(
            setattr, self.controller, "labels_layer", layer if isinstance(layer, Labels) else None
        )

    def _follow_chosen(self, index: int) -> None:
        if index >= 0 and not self._refreshing and index != self.controller.frame_axis:
            self._guarded(setattr, self.controller, "frame_axis", index)

    def _normalization_chosen(self, index: int) -> None:
        self.controller.contrast_mode = "limits" if index == 0 else "auto"

    def _image_size_chosen(self, text: str) -> None:
        self.controller.image_size = int(text)

    def _precision_chosen(self, index: int) -> None:
        mode = self._ui.precision.itemData(index)
        if mode != self.controller.precision:
            try:
                self.controller.precision = mode
            except Exception as err:  # noqa: BLE001 - e.g. refused during a propagation
                self._show_precision(self.controller.precision)
                self._report("", err)

    # ------------------------------------------------------------------ showing state
    def _show_status(self, text: str) -> None:
        if self._alive:
            self._ui.model_status.setText(text)

    def _show_progress(self, value: int, maximum: int) -> None:
        if not self._alive:
            return
        self._ui.progress.setRange(0, max(1, maximum))
        self._ui.progress.setValue(value)

    def _show_running(self, running: bool) -> None:
        """Lock the controls that would change a propagation's inputs while it runs."""
        if not self._alive:
            return
        ui = self._ui
        for w in (ui.model, ui.device, ui.load, ui.image, ui.labels, ui.follow, ui.image_size,
                  ui.config, ui.normalization, ui.precision, ui.everything,
                  *ui.propagate_buttons):
            w.setEnabled(not running)
        ui.cancel.setEnabled(running)

    def _show_precompute_progress(self, value: int, maximum: int) -> None:
        if not self._alive:
            return
        self._ui.precompute_progress.setRange(0, max(1, maximum))
        self._ui.precompute_progress.setValue(value)

    def _show_precomputing(self, running: bool) -> None:
        if not self._alive:
            return
        self._ui.precompute.setEnabled(not running)
        self._ui.precompute_cancel.setEnabled(running)

    def _show_store_status(self, text: str) -> None:
        if self._alive:
            self._ui.store_status.setText(text)

    def _show_defaults(self, obj_id: int, positive: bool) -> None:
        if not self._alive:
            return
        ui = self._ui
        for w in (ui.object, ui.negative):
            w.blockSignals(True)
        ui.object.setValue(obj_id)
        ui.negative.setChecked(not positive)
        for w in (ui.object, ui.negative):
            w.blockSignals(False)

    def _show_precision(self, mode: str) -> None:
        if not self._alive:
            return
        combo = self._ui.precision
        combo.blockSignals(True)
        combo.setCurrentIndex(max(0, combo.findData(mode)))
        combo.blockSignals(False)

    def _show_precision_in_use(self, text: str) -> None:
        if self._alive:
            self._ui.precision_in_use.setText(text)

    def _show_pre_encode(self, on: bool) -> None:
        if not self._alive:
            return
        box = self._ui.pre_encode
        box.blockSignals(True)
        box.setChecked(on)
        box.blockSignals(False)

    def _show_overwrite(self, on: bool) -> None:
        if not self._alive:
            return
        box = self._ui.overwrite
        box.blockSignals(True)
        box.setChecked(on)
        box.blockSignals(False)

    def _refresh_layer_combos(self) -> None:
        """Fill the image, labels and follow-axis choosers from the viewer's layers."""
        if not self._alive:
            return
        c = self.controller
        self._refreshing = True
        try:
            ui, layers, image = self._ui, c.viewer.layers, c.image_layer
            ui.fill_layers(ui.image, [la for la in layers if isinstance(la, Image)], image)
            shape = () if image is None else spatial_shape(image)
            fits = [la for la in layers if isinstance(la, Labels) and la.data.shape == shape]
            ui.fill_layers(ui.labels, fits, c.labels_layer, first=NEW_LABELS)
            ui.show_axes(shape, c.frame_axis or 0)
        finally:
            self._refreshing = False

    # ------------------------------------------------------------------ notifications
    def _notify(self, level: str, message: str) -> None:
        _NOTIFY.get(level, show_info)(message)

    def _report(self, context: str, err: BaseException) -> None:
        """A failure as a notification: the core's message for the errors it raises on bad
        input or data; anything else (a bug) with its traceback, as napari reports errors."""
        if isinstance(err, _EXPECTED):
            show_error(f"{context}: {err}" if context else str(err))
        else:
            notification_manager.receive_error(type(err), err, err.__traceback__)
