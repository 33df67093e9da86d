"""Propagation through stacks: every frame written, undo, the user's labels kept, cancel,
deleted layers, 4D data, and a main thread that stays free."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QTimer

from .conftest import blob_stack, wait_idle


@pytest.fixture
def notifications():
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _frames_with(labels: np.ndarray, value: int) -> list[int]:
    return [t for t in range(labels.shape[0]) if (labels[t] == value).any()]


def test_propagate_both_ways_keeps_painted_labels_and_undoes_in_one_step(loaded, qtbot):
    viewer, widget = loaded(blob_stack(4))
    viewer.dims.set_current_step(0, 1)
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((1, 30, 25))
    assert widget.new_object() == 2
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((1, 5, 5))  # a second object: both are tracked in one run
    labels = widget.labels_layer
    labels.data[3, 50:60, 2:12] = 7  # painted by hand: another object
    labels.refresh()
    before = np.array(labels.data, copy=True)

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    ticks_at_first_frame = []
    widget.frame_propagated.connect(lambda t: ticks_at_first_frame.append(len(ticks)))
    masks = {}
    with qtbot.waitSignal(widget.propagation_finished, timeout=120_000) as done:
        worker = widget.propagate("both")
        worker.yielded.connect(lambda item: masks.update({item[0]: item[1]}))
        assert not widget._ui.model.isEnabled()  # no model change during a run...
        with pytest.raises(RuntimeError, match="propagation"):
            widget.set_model("sam2.1_hiera_tiny")  # ...not even from a script
    timer.stop()
    assert done.args == [True]
    # the main thread ran its timer while the worker computed the first frame
    assert ticks_at_first_frame[0] > 0
    assert widget._ui.model.isEnabled()

    after = np.asarray(labels.data)
    assert _frames_with(after, 1) == [0, 1, 2, 3]
    assert all(sorted(found) == [1, 2] for found in masks.values())  # all objects at once
    assert set(np.unique(after)) <= {0, 1, 2, 7}
    assert masks[3][1][50:60, 2:12].any()  # the mask did cover the painted square...
    assert (after[3, 50:60, 2:12] == 7).all()  # ...which kept its label
    assert widget._ui.progress.value() == widget._ui.progress.maximum()

    labels.undo()  # one step reverts the whole propagation
    np.testing.assert_array_equal(labels.data, before)


def test_cancel_keeps_delivered_frames_and_allows_a_new_run(loaded, qtbot, notifications):
    viewer, widget = loaded(blob_stack(4))
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((0, 30, 20))
    delivered = []

    def on_frame(t):
        delivered.append(t)
        widget.cancel()  # right after the first frame

    widget.frame_propagated.connect(on_frame)
    with qtbot.waitSignal(widget.propagation_finished, timeout=120_000) as done:
        widget.propagate("forward")
    widget.frame_propagated.disconnect(on_frame)
    assert done.args == [False]
    assert delivered == [0]
    wait_idle(qtbot, widget)
    labels = np.asarray(widget.labels_layer.data)
    assert _frames_with(labels, 1) == [0]  # nothing after the cancel

    with qtbot.waitSignal(widget.propagation_finished, timeout=120_000) as done:
        widget.propagate("forward")
    assert done.args == [True]
    assert _frames_with(np.asarray(widget.labels_layer.data), 1) == [0, 1, 2, 3]

    # correct frame 3 with a negative click, then propagate back over frames 3 and 2 only
    tracked = np.array(widget.labels_layer.data, copy=True)
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000) as corrected:
        widget.add_point((3, 5, 60), positive=False)
    assert corrected.args == [3]
    written = []
    widget.frame_propagated.connect(written.append)
    with qtbot.waitSignal(widget.propagation_finished, timeout=120_000) as done:
        widget.propagate("backward", frame_range=(2, 3))
    assert done.args == [True] and written == [3, 2]
    after = np.asarray(widget.labels_layer.data)
    np.testing.assert_array_equal(after[:2], tracked[:2])  # outside the range: untouched
    assert (after[3] != tracked[3]).any()

    # a core error is a notification with the core's message, and the run ends cleanly
    with qtbot.waitSignal(widget.propagation_finished, timeout=60_000) as done:
        widget.propagate("forward", frame_range=(1, 2))
    assert done.args == [False]
    assert any("No prompted frame in frame_range (1, 2)" in str(n.message) for n in notifications)


@pytest.mark.parametrize("which", ["image", "labels", "clicks"])
def test_deleting_a_layer_mid_run_stops_it_with_a_message(loaded, qtbot, notifications, which):
    viewer, widget = loaded(blob_stack(4))
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((0, 30, 20))
    layer = {"image": widget.image_layer, "labels": widget.labels_layer,
             "clicks": widget.points_layer}[which]

    def delete(_t):
        if layer in viewer.layers:
            viewer.layers.remove(layer)

    widget.frame_propagated.connect(delete)
    with qtbot.waitSignal(widget.propagation_finished, timeout=120_000) as done:
        widget.propagate("forward")
    assert done.args == [False]
    wait_idle(qtbot, widget)
    messages = [str(n.message) for n in notifications]
    assert any("was deleted; the propagation was stopped" in m for m in messages), messages
    assert not any("failed" in m.lower() for m in messages), messages
    if which == "image":
        assert widget.image_layer is None and widget.session is None
    elif which == "labels":  # still usable: the next click makes a new labels layer
        with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
            widget.add_point((0, 20, 30))
        assert widget.labels_layer in viewer.layers and (widget.labels_layer.data[0] == 1).any()


def test_4d_follows_the_chosen_axis_at_the_current_plane(loaded, qtbot):
    """T×Z×Y×X: follow time (axis 0) through z-plane 1; plane 0 stays untouched."""
    tz = np.stack([blob_stack(3, seed=1), blob_stack(3, seed=2)], axis=1)  # 3×2×64×64
    viewer, widget = loaded(tz)
    assert widget._ui.follow.isVisibleTo(widget)
    widget.frame_axis = 0
    viewer.dims.current_step = (0, 1, 32, 32)  # t = 0, z = 1
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((30, 25))  # (y, x) on the current slice: t = 0, z = 1
    assert widget.points_layer.data.tolist() == [[0, 1, 30, 25]]
    with qtbot.waitSignal(widget.propagation_finished, timeout=120_000) as done:
        widget.propagate("forward")
    assert done.args == [True]
    labels = np.asarray(widget.labels_layer.data)
    assert labels.shape == tz.shape
    assert all((labels[t, 1] == 1).any() for t in range(3))
    assert not labels[:, 0].any()
