"""What a user may ask of the dock widget while a job runs, and layers that go mid-job: a
clear refusal or a clean stop, never an exception in napari's hook, and the frames already
written and the user's painted labels kept."""

from __future__ import annotations

import numpy as np
import pytest

from tests.widgets.conftest import blob_stack, wait_idle


def _running(widget, qtbot, frames: int = 2):
    """Start a propagation and return once ``frames`` frames were written."""
    seen = []
    widget.controller.frame_propagated.connect(seen.append)
    widget.propagate("both")
    qtbot.waitUntil(lambda: len(seen) >= frames, timeout=120_000)
    return seen


def test_a_second_propagation_and_a_model_reload_mid_run_are_refused(loaded, qtbot,
                                                                     widget_checkpoint):
    viewer, widget = loaded(blob_stack(12))
    widget.add_point((0, 30, 25))
    wait_idle(qtbot, widget)
    painted = widget.labels_layer
    painted.data[11, :4, :4] = 9  # the user's own label on a frame not tracked yet
    with qtbot.waitSignal(widget.propagation_finished, timeout=240_000) as done:
        _running(widget, qtbot)
        with pytest.raises(RuntimeError, match="already running"):
            widget.propagate("both")
        with pytest.raises(RuntimeError, match="while a propagation runs; cancel it first"):
            widget.set_model(str(widget_checkpoint), device="cpu", image_size=256)
    assert done.args == [True]  # the first run went on to the end
    data = widget.labels_layer.data
    assert all(data[t].any() for t in range(12))
    assert (data[11, :4, :4] == 9).all()  # painted labels survive (overwrite is off)


@pytest.mark.parametrize("layer", ["image", "labels", "clicks"])
def test_a_layer_removed_mid_propagation_stops_it_cleanly(layer, loaded, qtbot):
    viewer, widget = loaded(blob_stack(12))
    widget.add_point((0, 30, 25))
    wait_idle(qtbot, widget)
    notices = []
    widget.controller.notice.connect(lambda level, text: notices.append(text))
    with qtbot.waitSignal(widget.propagation_finished, timeout=240_000) as done:
        written = _running(widget, qtbot)
        target = {"image": widget.image_layer, "labels": widget.labels_layer,
                  "clicks": widget.points_layer}[layer]
        labels = widget.labels_layer
        viewer.layers.remove(target)
    assert done.args == [False]
    wait_idle(qtbot, widget)
    assert len([n for n in notices if "was stopped" in n]) == 1
    if layer != "labels":
        assert all(np.asarray(labels.data[t]).any() for t in written)  # written frames kept
    assert not widget.is_running


def test_removing_the_image_mid_precompute_stops_it(loaded, qtbot):
    viewer, widget = loaded(blob_stack(12))
    steps = []
    c = widget.controller
    c.precompute_progress.connect(lambda done, total: steps.append(done))
    with qtbot.waitSignal(c.precompute_running, timeout=240_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
        qtbot.waitUntil(lambda: len(steps) >= 2, timeout=120_000)
        viewer.layers.remove(widget.image_layer)
    assert max(steps) < 12 and not widget.is_precomputing
    wait_idle(qtbot, widget)


@pytest.mark.parametrize("job", ["propagate", "precompute", "everything"])
def test_closing_the_dock_widget_mid_job_stops_it_cleanly(job, loaded, qtbot):
    viewer, widget = loaded(blob_stack(12))
    c = widget.controller
    widget.add_point((0, 30, 25))
    wait_idle(qtbot, widget)
    labels = widget.labels_layer
    before = np.asarray(labels.data).copy()
    if job == "propagate":
        _running(widget, qtbot)
    elif job == "precompute":
        steps = []
        c.precompute_progress.connect(lambda done, total: steps.append(done))
        widget.precompute_embeddings()
        qtbot.waitUntil(lambda: len(steps) >= 2, timeout=120_000)
    else:
        widget.segment_everything(points_per_side=4)
    viewer.window.remove_dock_widget("all")  # napari's close button on the dock
    assert not widget._alive
    qtbot.waitUntil(lambda: not c.jobs.busy, timeout=120_000)  # its worker ended
    assert not c.is_running and not c.is_precomputing
    after = np.asarray(labels.data)
    assert (after[before > 0] == before[before > 0]).all()  # nothing drawn was lost
    with pytest.raises(RuntimeError, match="widget was closed"):
        widget.add_point((3, 30, 25))  # a closed widget takes no more work
    with pytest.raises(RuntimeError, match="widget was closed"):
        widget.precompute_embeddings()
    assert not c.jobs.busy
