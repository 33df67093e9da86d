"""A layer a job uses is given new data, or swapped for another layer, mid-job: the job stops
with one clear notice, nothing is raised into napari's hook, and the next job uses the new
data rather than what was there before."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image

from tests.widgets.conftest import blob_stack, wait_idle


def _mid_propagation(widget, qtbot, frames: int = 2) -> list[int]:
    seen: list[int] = []
    widget.controller.frame_propagated.connect(seen.append)
    widget.propagate("both")
    qtbot.waitUntil(lambda: len(seen) >= frames, timeout=120_000)
    return seen


@pytest.mark.parametrize("layer", ["image", "labels"])
def test_new_data_mid_propagation_stops_it_with_one_notice(layer, loaded, qtbot):
    viewer, widget = loaded(blob_stack(12))
    c = widget.controller
    widget.add_point((0, 30, 25))
    wait_idle(qtbot, widget)
    notices: list[str] = []
    c.notice.connect(lambda level, text: notices.append(text))
    labels = widget.labels_layer
    with qtbot.waitSignal(widget.propagation_finished, timeout=240_000) as done:
        written = list(_mid_propagation(widget, qtbot))
        if layer == "image":
            widget.image_layer.data = blob_stack(12, seed=5)[:, ::-1].copy()
        else:
            fresh = np.zeros_like(np.asarray(labels.data))
            fresh[5, :4, :4] = 3  # the user's new labels
            labels.data = fresh
    assert done.args == [False]
    wait_idle(qtbot, widget)
    replaced = [n for n in notices if "was given new data" in n]
    assert len(replaced) == 1 and "propagation was stopped" in replaced[0], notices
    data = np.asarray(labels.data)
    if layer == "image":
        assert all(data[t].any() for t in written)  # the frames written before stay
    else:
        assert (data == fresh).all()  # nothing more was written into the new labels
    assert not widget.is_running and not c.jobs.busy


def test_a_click_after_new_image_data_uses_the_new_data(loaded, qtbot):
    viewer, widget = loaded(blob_stack(4))
    c = widget.controller
    widget.add_point((0, 30, 25))
    wait_idle(qtbot, widget)
    before = c.session
    old_frame = np.asarray(before.frames.read(1))
    new = blob_stack(4, seed=3)
    new[:] = new[:, :, ::-1]  # the bright square now on the other side
    widget.image_layer.data = new
    widget.add_point((1, 30, 40))
    wait_idle(qtbot, widget)
    assert c.session is not before  # a new stack, not the frames read before
    assert not np.array_equal(np.asarray(c.session.frames.read(1)), old_frame)
    assert widget.labels_layer.data[1].any()


def test_new_image_data_mid_precompute_stops_it(loaded, qtbot):
    viewer, widget = loaded(blob_stack(12))
    c = widget.controller
    steps: list[int] = []
    notices: list[str] = []
    c.notice.connect(lambda level, text: notices.append(text))
    c.precompute_progress.connect(lambda done, total: steps.append(done))
    with qtbot.waitSignal(c.precompute_running, timeout=240_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
        qtbot.waitUntil(lambda: len(steps) >= 2, timeout=120_000)
        widget.image_layer.data = blob_stack(12, seed=9)
    wait_idle(qtbot, widget)
    assert max(steps) < 12 and not widget.is_precomputing
    assert [n for n in notices if "precomputing embeddings was stopped" in n], notices


def test_the_image_layer_swapped_in_the_layer_list_mid_propagation(loaded, qtbot):
    viewer, widget = loaded(blob_stack(12))
    widget.add_point((0, 30, 25))
    wait_idle(qtbot, widget)
    notices: list[str] = []
    widget.controller.notice.connect(lambda level, text: notices.append(text))
    labels = widget.labels_layer
    with qtbot.waitSignal(widget.propagation_finished, timeout=240_000) as done:
        written = list(_mid_propagation(widget, qtbot))
        # A swap as napari's layer list makes it: out, then the new one in at the same place
        # (``viewer.layers[i] = new`` reports the new layer as the removed one and breaks
        # napari's own canvas, so it is not a swap users can make).
        index = viewer.layers.index(widget.image_layer)
        viewer.layers.pop(index)
        viewer.layers.insert(index, Image(blob_stack(12, seed=2), name="cells (denoised)"))
    assert done.args == [False]
    wait_idle(qtbot, widget)
    assert len([n for n in notices if "was stopped" in n]) == 1, notices
    assert all(np.asarray(labels.data[t]).any() for t in written)
    assert not widget.is_running
    assert widget.image_layer.name == "cells (denoised)"  # the new image is taken up
    widget.add_point((0, 30, 25))
    wait_idle(qtbot, widget)
    assert widget.labels_layer is not labels and widget.labels_layer.data[0].any()
