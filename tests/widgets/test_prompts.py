"""Clicks and boxes on one slice: masks at once, negative clicks, no re-encoding, manifest."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
from napari.utils.notifications import notification_manager

from .conftest import SIZE, WIDGET_NAME, blob_stack, wait_idle


@dataclass
class _MouseEvent:
    """What napari's layer mouse callbacks read from a vispy event."""

    type: str
    position: tuple[float, ...]
    modifiers: list[str] = field(default_factory=list)
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list[float] | None = None
    up_direction: list[float] | None = None
    dims_displayed: list[int] = field(default_factory=lambda: [0, 1])


def _click(layer, position, modifiers=()):
    for kind, dispatch in (("mouse_press", mouse_press_callbacks),
                           ("mouse_release", mouse_release_callbacks)):
        event = _MouseEvent(kind, tuple(position), list(modifiers))
        dispatch(layer, ReadOnlyWrapper(event, exceptions=("handled",)))


@pytest.fixture
def notifications():
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def test_manifest_offers_the_widget_in_the_segment_menu():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-sam2")
    (widget,) = manifest.contributions.widgets
    assert widget.display_name == WIDGET_NAME
    assert [m.command for m in manifest.contributions.menus["napari/layers/segment"]] == [
        widget.command
    ]


def test_clicks_polarity_and_objects_without_a_model(dock, qtbot):
    """Prompt layers' features follow the toggle, Shift-click and "new object"; the next
    object id is past every label in use."""
    viewer, widget = dock(blob_stack(3))
    labels = viewer.add_labels(np.zeros((3, 64, 64), np.uint32), name="painted")
    labels.data[0, :4, :4] = 6
    widget.labels_layer = labels
    widget.add_point((1, 30, 30))
    points = widget.points_layer
    assert points.features["positive"].tolist() == [True]
    _click(points, (1, 10, 10), modifiers=["Shift"])  # a Shift-click is negative...
    _click(points, (1, 12, 12))  # ...only that one
    widget.positive = False  # the toggle (also the N key)
    widget.add_point((1, 40, 40))
    assert points.features["positive"].tolist() == [True, False, True, False]
    assert widget.new_object() == 7  # after label 6 painted in the labels layer
    widget.positive = True
    _click(points, (2, 20, 20))
    assert points.features["obj_id"].tolist() == [1, 1, 1, 1, 7]
    assert labels.selected_label == 7
    widget.add_point((2, 8, 8), positive=False, obj_id=3)  # explicit, for this click only
    _click(points, (2, 9, 9))
    assert points.features["obj_id"].tolist() == [1, 1, 1, 1, 7, 3, 7]
    assert points.features["positive"].tolist() == [True, False, True, False, True, False, True]
    red = np.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(  # negative clicks are drawn red
        (points.face_color == red).all(axis=1), ~points.features["positive"].to_numpy()
    )
    widget.add_box((2, 5, 5), (2, 20, 25))
    assert widget.boxes_layer.features["obj_id"].tolist() == [7]
    corners = widget.boxes_layer.data[0][:, 1:]
    np.testing.assert_array_equal(corners, [[5, 5], [5, 25], [20, 25], [20, 5]])
    assert widget.model is None and labels.data.max() == 6  # nothing predicted without a model


def test_checkpoint_file_click_negative_click_and_feature_cache(
    dock, widget_checkpoint, qtbot, monkeypatch, notifications
):
    """The "checkpoint file…" entry loads a file (config inferred); a click gives a mask at
    once; a negative click changes it without encoding the image again."""
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = dock(blob_stack(1)[0])
    ui = widget._ui
    chosen = (str(widget_checkpoint), "")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: chosen)
    ui.model.setCurrentIndex(ui.model.count() - 1)
    ui.model.activated.emit(ui.model.count() - 1)  # "checkpoint file…" -> file dialog
    assert ui.model.currentText() == str(widget_checkpoint)
    ui.image_size.setCurrentText(str(SIZE))
    ui.device.setCurrentText("cpu")
    with qtbot.waitSignal(widget.model_loaded, timeout=60_000):
        ui.load.click()
    assert widget.model.image_size == SIZE

    calls = []
    forward_image = widget.model.forward_image
    counting = lambda x: calls.append(1) or forward_image(x)  # noqa: E731
    monkeypatch.setattr(widget.model, "forward_image", counting)

    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((30, 25))
    first = np.asarray(widget.labels_layer.data).copy()
    assert (first == 1).any() and set(np.unique(first)) <= {0, 1}
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((5, 5), positive=False)
    second = np.array(widget.labels_layer.data, copy=True)
    assert (second != first).any()
    points = widget.points_layer
    moved = np.array(points.data, copy=True)
    moved[1] = (40, 60)
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        points.data = moved  # dragging a click re-runs the prediction too
    second = np.array(widget.labels_layer.data, copy=True)
    assert len(calls) == 1  # one encoding: the later clicks and the move only decoded

    widget.add_point((500, 500))  # outside the image: the core's message, no traceback...
    wait_idle(qtbot, widget)
    assert any("outside the image" in str(n.message) for n in notifications)
    np.testing.assert_array_equal(widget.labels_layer.data, second)  # ...and the mask stays


def test_rgb_image_and_box_prompt(loaded, qtbot):
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[10:30, 20:40] = (200, 60, 30)
    viewer, widget = loaded(rgb, rgb=True)
    assert widget.labels_layer is None or widget.labels_layer.data.shape == (48, 64)
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_box((8, 18), (32, 42))  # a box prompt alone
    assert widget.labels_layer.data.shape == (48, 64)
    assert (widget.labels_layer.data == 1).any()


def test_closing_the_dock_widget_disconnects_it(dock, qtbot):
    viewer, widget = dock(blob_stack(2))
    widget.add_point((1, 30, 30))
    points = widget.points_layer
    viewer.window.remove_dock_widget("all")
    assert not widget._alive
    wait_idle(qtbot, widget)
    points.add([1, 5, 5])  # editing the old prompt layers or the layer list is harmless now
    assert not widget.busy  # (an edit seen by the widget would schedule an update)
    viewer.layers.remove("cells")
    viewer.add_image(blob_stack(2), name="more")
    qtbot.wait(50)
    assert widget.image_layer is not None and widget.image_layer.name == "cells"
