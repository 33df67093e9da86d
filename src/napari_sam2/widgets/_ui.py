"""The dock widget's controls, laid out (no behaviour here; ``_widget.py`` connects them)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..models.checkpoints import REGISTRY
from ._layers import MAX_LABEL

__all__ = ["CHECKPOINT_FILE", "Controls", "NEW_LABELS"]

CHECKPOINT_FILE = "checkpoint file…"
NEW_LABELS = "new labels layer"
INFER_CONFIG = "inferred from the file"
IMAGE_SIZES = ("1024", "512", "256")
NORMALIZATIONS = ("image contrast limits", "automatic (percentiles)")
# (shown text, mode of napari_sam2.models.precision.set_precision)
PRECISIONS = (
    ("automatic (fastest for this machine)", "auto"),
    ("fast float32", "fast"),
    ("strict float32", "fp32"),
    ("bfloat16 (faster, approximate)", "bf16"),
)

HELP = (
    "Click: positive · Shift-click: negative · N: toggle · M: new object. "
    "Rectangles on the boxes layer are box prompts."
)


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return box


class Controls:
    """All controls of the widget, as attributes, added to ``parent``'s layout."""

    def __init__(self, parent: QWidget, devices: list[str]) -> None:
        outer = QVBoxLayout(parent)

        # -- data
        data = QGroupBox("Data")
        form = QFormLayout(data)
        self.image = QComboBox()
        self.labels = QComboBox()
        self.follow = QComboBox()
        self.follow.setToolTip("For 4D data: the axis followed by propagation; the other axes "
                               "stay where the viewer is.")
        self.follow_label = QLabel("follow axis")
        form.addRow("image", self.image)
        form.addRow("labels", self.labels)
        form.addRow(self.follow_label, self.follow)
        outer.addWidget(data)

        # -- model
        model = QGroupBox("Model")
        form = QFormLayout(model)
        self.model = QComboBox()
        self.model.addItems([*REGISTRY, CHECKPOINT_FILE])
        self.device = QComboBox()
        self.device.addItems(devices)
        self.load = QPushButton("Load model")
        self.model_status = QLabel("no model loaded")
        self.model_status.setWordWrap(True)
        self.advanced = QToolButton()
        self.advanced.setText("advanced")
        self.advanced.setCheckable(True)
        self.advanced.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        form.addRow("model", self.model)
        form.addRow("device", self.device)
        form.addRow(self.load, self.model_status)
        form.addRow(self.advanced)
        self.advanced_box = QWidget()
        adv = QFormLayout(self.advanced_box)
        adv.setContentsMargins(0, 0, 0, 0)
        self.image_size = QComboBox()
        self.image_size.addItems(IMAGE_SIZES)
        self.image_size.setToolTip("Model input size: 1024 as trained; 512 or 256 are much "
                                   "faster on a CPU, with coarser masks.")
        self.config = QComboBox()
        self.config.setEditable(True)
        self.config.addItems([INFER_CONFIG, *sorted({i.config for i in REGISTRY.values()})])
        self.config.setToolTip("Config of a checkpoint file: inferred from its weights, a "
                               "bundled config name, or the path of a YAML file.")
        self.normalization = QComboBox()
        self.normalization.addItems(NORMALIZATIONS)
        self.points_per_side = QSpinBox()
        self.points_per_side.setRange(2, 64)
        self.points_per_side.setValue(32)
        self.precision = QComboBox()
        for text, mode in PRECISIONS:
            self.precision.addItem(text, mode)
        self.precision.setToolTip(
            "automatic: bfloat16 (SAM 2's own precision) on CUDA and on CPUs with bfloat16 "
            "units, float32 elsewhere. fast float32: float32 results, using bfloat16 units "
            "where the CPU keeps float32 accuracy. strict float32: the reference numbers. "
            "bfloat16: faster, masks may differ by a few edge pixels."
        )
        self.precision_in_use = QLabel("no model loaded")
        self.precision_in_use.setWordWrap(True)
        self.pre_encode = QCheckBox("Pre-encode neighbouring slices")
        self.pre_encode.setToolTip("While you look at a slice, encode it and the slices "
                                   "next to it in the background, so clicks there are quick.")
        adv.addRow("image size", self.image_size)
        adv.addRow("checkpoint config", self.config)
        adv.addRow("contrast", self.normalization)
        adv.addRow("precision", self.precision)
        adv.addRow("in use", self.precision_in_use)
        adv.addRow(self.pre_encode)
        adv.addRow("everything: points per side", self.points_per_side)
        form.addRow(self.advanced_box)
        self.advanced_box.setVisible(False)
        outer.addWidget(model)

        # -- embeddings on disk
        store = QGroupBox("Embeddings")
        form = QFormLayout(store)
        self.precompute = QPushButton("Precompute embeddings")
        self.precompute.setToolTip(
            "Encode every slice now, in the background, and keep the features on disk: "
            "clicks and propagation need no encoding afterwards, in this session and the next "
            "ones. Resumes where it stopped."
        )
        self.precompute_progress = QProgressBar()
        self.precompute_progress.setTextVisible(True)
        self.precompute_cancel = QPushButton("Cancel")
        self.precompute_cancel.setEnabled(False)
        self.store_status = QLabel("embeddings: none yet")
        self.store_status.setWordWrap(True)
        form.addRow(self.precompute)
        form.addRow(_row(self.precompute_progress, self.precompute_cancel))
        form.addRow(self.store_status)
        outer.addWidget(store)

        # -- prompts
        prompts = QGroupBox("Prompts")
        form = QFormLayout(prompts)
        self.object = QSpinBox()
        self.object.setRange(1, MAX_LABEL)
        self.new_object = QPushButton("New object (M)")
        self.negative = QPushButton("Negative clicks (N)")
        self.negative.setCheckable(True)
        self.everything = QPushButton("Segment everything on this slice")
        hint = QLabel(HELP)
        hint.setWordWrap(True)
        form.addRow("object", _row(self.object, self.new_object))
        form.addRow(self.negative)
        form.addRow(hint)
        form.addRow(self.everything)
        outer.addWidget(prompts)

        # -- propagation
        prop = QGroupBox("Propagate")
        form = QFormLayout(prop)
        self.backward = QPushButton("◀ backward")
        self.both = QPushButton("both")
        self.forward = QPushButton("forward ▶")
        self.limit = QCheckBox("only frames")
        self.first = QSpinBox()
        self.last = QSpinBox()
        self.overwrite = QCheckBox("overwrite other labels")
        self.overwrite.setToolTip("Off: pixels of other label values are never changed.")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        form.addRow(_row(self.backward, self.both, self.forward))
        form.addRow(_row(self.limit, self.first, QLabel("to"), self.last))
        form.addRow(self.overwrite)
        form.addRow(_row(self.progress, self.cancel))
        self.propagate_buttons = (self.backward, self.both, self.forward)
        self.propagate_box = prop
        outer.addWidget(prop)
        outer.addStretch(1)

        self.advanced.toggled.connect(self._toggle_advanced)

    # -- filling the choosers
    @staticmethod
    def fill_layers(
        combo: QComboBox, layers: list, selected: object, first: str | None = None
    ) -> None:
        """List ``layers`` (names, the layer as item data) and select ``selected``; compares
        with ``==`` so that napari's plugin proxies of a layer match the layer itself."""
        combo.clear()
        if first is not None:
            combo.addItem(first, None)
        for layer in layers:
            combo.addItem(layer.name, layer)
        for i in range(combo.count()):
            data = combo.itemData(i)
            if data is not None and selected is not None and data == selected:
                combo.setCurrentIndex(i)
                break

    def show_axes(self, shape: tuple[int, ...], frame_axis: int) -> None:
        """Offer the non-spatial axes of an image of ``shape`` (shown for 4D and more) and
        bound the frame range by the followed axis (kept when its length does not change)."""
        self.follow.clear()
        n_axes = max(0, len(shape) - 2)
        for axis in range(n_axes):
            self.follow.addItem(f"axis {axis} ({shape[axis]})", axis)
        for w in (self.follow, self.follow_label):
            w.setVisible(n_axes >= 2)
        self.propagate_box.setEnabled(n_axes >= 1)
        if not n_axes:
            return
        axis = frame_axis if frame_axis < n_axes else 0
        self.follow.setCurrentIndex(axis)
        n = shape[axis]
        if self.last.maximum() != n - 1:
            for spin in (self.first, self.last):
                spin.setRange(0, n - 1)
            self.first.setValue(0)
            self.last.setValue(n - 1)

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced_box.setVisible(shown)
        self.advanced.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
