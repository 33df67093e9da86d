"""Qt-free parts of the widget: the labels-writing rule, frame placement and prompt diffs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2.core.annotations import FramePrompt
from napari_sam2.widgets._labels_writer import FramePlacement, merge_object_masks
from napari_sam2.widgets._session import SegmentationSession


def test_merge_touches_only_the_written_objects():
    old = np.array([[0, 1, 1, 2],
                    [0, 0, 3, 3]], np.uint16)
    mask = np.array([[1, 0, 1, 1],
                     [1, 0, 1, 0]], bool)
    np.testing.assert_array_equal(
        merge_object_masks(old, {1: mask}),
        [[1, 0, 1, 2],   # 1 where on and free or already 1; 1 cleared where off; 2 kept
         [1, 0, 3, 3]],  # 3 kept under the mask
    )
    np.testing.assert_array_equal(
        merge_object_masks(old, {1: mask}, overwrite=True), [[1, 0, 1, 1], [1, 0, 1, 3]]
    )


@pytest.mark.parametrize(
    ("placement", "key"),
    [
        (FramePlacement(2), (slice(None), slice(None))),
        (FramePlacement(3, 0), (4, slice(None), slice(None))),
        (FramePlacement(4, 1, {0: 2}), (2, 4, slice(None), slice(None))),
    ],
)
def test_frame_placement(placement, key):
    if placement.frame_axis is None:
        assert placement.key(0) == key
        return
    assert placement.key(4) == key
    idx = placement.full_indices(4, (np.array([1, 2]), np.array([3, 4])))
    assert [list(i) for i in idx] == [[k, k] for k in key[:-2]] + [[1, 2], [3, 4]]


class _Frames:
    num_frames, frame_shape = 3, (20, 30)


def test_set_prompts_reports_changes_and_drops_only_bad_clicks():
    session = SegmentationSession(predictor=None, frames=_Frames())
    click = FramePrompt(1, 2, np.array([[5.0, 6.0]]), np.array([1]))
    changes, errors = session.set_prompts([click])
    assert list(changes) == [(1, 2)] and not errors
    assert session.set_prompts([click]) == ({}, [])  # nothing changed
    with_outside = FramePrompt(1, 2, np.array([[5.0, 6.0], [99.0, 6.0]]), np.array([1, 0]))
    changes, errors = session.set_prompts([with_outside])
    assert changes == {} and len(errors) == 1 and "outside the image" in errors[0]
    changes, errors = session.set_prompts([FramePrompt(7, 2, np.array([[1.0, 1.0]]), [1])])
    assert changes == {(1, 2): None} and "outside the stack" in errors[0]
    assert session.objects == []
