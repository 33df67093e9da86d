"""Segment everything on the current slice: new label values only, existing labels kept."""

from __future__ import annotations

import numpy as np

from .conftest import blob_stack


def test_segment_everything_adds_new_labels_and_keeps_existing_ones(loaded, qtbot):
    viewer, widget = loaded(blob_stack(3))
    viewer.dims.set_current_step(0, 2)
    labels = viewer.add_labels(np.zeros((3, 64, 64), np.uint32), name="mine")
    labels.data[2, 0:10, 0:10] = 5
    labels.data[0, 30:40, 30:40] = 9  # another slice: the largest label in use
    widget.labels_layer = labels
    before = np.array(labels.data, copy=True)
    with qtbot.waitSignal(widget.everything_finished, timeout=120_000) as done:
        # random weights: accept every candidate mask so that some survive
        widget.segment_everything(
            points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
        )
    n_new = done.args[0]
    after = np.asarray(labels.data)
    changed = after != before
    assert n_new > 0 and changed.any()
    assert not changed[[0, 1]].any()  # only the current slice
    assert (after[changed] > 9).all()  # new ids after the largest in use
    assert (after[2, 0:10, 0:10] == 5).all()  # never overwrites
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
