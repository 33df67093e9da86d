"""napari annotations -> SAM prompts: coordinate order, grouping, CSV files written by napari
itself, and the error messages for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sam2.core.annotations import (
    FramePrompt,
    merge_prompts,
    point_features,
    prompts_from_boxes,
    prompts_from_dict,
    prompts_from_points,
    validate_prompts,
)
from napari_sam2.core.annotations.napari_csv import read_points_csv, read_shapes_csv


@pytest.fixture(scope="module")
def napari_save():
    """Save a layer the way napari's File > Save does (its builtin CSV writers)."""
    napari = pytest.importorskip("napari")
    from napari.plugins import _initialize_plugins

    _initialize_plugins()

    def save(layer, path: Path) -> Path:
        written = layer.save(str(path))
        assert written == [str(path)]
        return path

    return save, napari


def test_import_is_free_of_qt_napari_and_torch() -> None:
    code = (
        "import sys, napari_sam2.core.annotations\n"
        "bad = [m for m in ('torch', 'qtpy', 'PyQt6', 'napari') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- points
def test_2d_points_become_xy_on_frame_0() -> None:
    prompts = prompts_from_points([[10.0, 20.0], [30.0, 40.0]], [True, False], frame_axis=None)
    assert len(prompts) == 1
    (p,) = prompts
    assert (p.frame_idx, p.obj_id) == (0, 1)
    np.testing.assert_array_equal(p.points, [[20.0, 10.0], [40.0, 30.0]])  # (x, y)
    np.testing.assert_array_equal(p.labels, [1, 0])
    assert p.points.dtype == np.float32 and p.labels.dtype == np.int32
    assert p.box is None


def test_3d_points_grouped_by_frame_and_object_in_input_order() -> None:
    coords = np.array([
        [2.9999, 5, 6],   # frame 3 (rounded), obj 2
        [0, 1, 2],        # frame 0, obj 1
        [3.2, 7, 8],      # frame 3, obj 2
        [3, 9, 9],        # frame 3, obj 1
    ])
    prompts = prompts_from_points(coords, [1, 1, 0, 1], [2, 1, 2, 1], frame_axis=0)
    assert [(p.frame_idx, p.obj_id) for p in prompts] == [(0, 1), (3, 1), (3, 2)]
    np.testing.assert_array_equal(prompts[2].points, [[6, 5], [8, 7]])
    np.testing.assert_array_equal(prompts[2].labels, [1, 0])


def test_other_axes_are_ignored_and_frame_axis_may_be_any_non_spatial_axis() -> None:
    tzyx = np.array([[4, 7, 10, 20], [4, 2, 11, 21]])  # (t, z, y, x): z ignored
    (p,) = prompts_from_points(tzyx, frame_axis=0)
    assert p.frame_idx == 4
    np.testing.assert_array_equal(p.points, [[20, 10], [21, 11]])
    by_z = prompts_from_points(tzyx, frame_axis=1, obj_ids=3)  # follow z instead
    assert [(q.frame_idx, q.obj_id) for q in by_z] == [(2, 3), (7, 3)]
    np.testing.assert_array_equal(by_z[0].points, [[21, 11]])
    assert [q.frame_idx for q in prompts_from_points(tzyx, frame_axis=-3)] == [2, 7]


@pytest.mark.parametrize(
    ("coords", "frame_axis", "message"),
    [
        ([[1, 2, 3]], None, "frame_axis=0"),
        ([[1, 2]], 0, "no frame axis"),
        ([[1, 2, 3]], 1, "spatial axis"),
        ([[1, 2, 3]], 5, "out of range"),
        ([[1, np.nan, 3]], 0, "NaN"),
        ([[np.nan, 1, 3]], 0, "NaN"),
        ([[-2, 1, 3]], 0, "frame -2"),
        ([1, 2, 3], 0, "N×D"),
    ],
)
def test_point_errors(coords, frame_axis, message) -> None:
    with pytest.raises(ValueError, match=message):
        prompts_from_points(coords, frame_axis=frame_axis)


@pytest.mark.parametrize(("obj_ids", "positive"), [([0], None), ([1.5], None), (None, [2])])
def test_bad_ids_and_polarities(obj_ids, positive) -> None:
    with pytest.raises(ValueError, match="obj_ids|positive"):
        prompts_from_points([[0, 1, 2]], positive, obj_ids, frame_axis=0)


def test_no_points_give_no_prompts() -> None:
    assert prompts_from_points(np.zeros((0, 3)), frame_axis=0) == []


# --------------------------------------------------------------------------- boxes
def test_rectangles_become_xyxy_boxes_one_object_each_by_default() -> None:
    rect = np.array([[1, 2, 3], [1, 2, 8], [1, 9, 8], [1, 9, 3]], float)  # (t, y, x)
    rotated = np.array([[0, 5, 0], [0, 0, 5], [0, 5, 10], [0, 10, 5]], float)
    prompts = prompts_from_boxes([rect, rotated], frame_axis=0)
    assert [(p.frame_idx, p.obj_id) for p in prompts] == [(0, 2), (1, 1)]
    np.testing.assert_array_equal(prompts[1].box, [3, 2, 8, 9])
    np.testing.assert_array_equal(prompts[0].box, [0, 0, 10, 10])  # bounding box of a diamond
    assert prompts[0].points is None


def test_rectangle_errors() -> None:
    bad = np.array([[1, 2, 3], [1, 2, 8], [2, 9, 8], [2, 9, 3]], float)
    with pytest.raises(ValueError, match="spans frames"):
        prompts_from_boxes([bad], frame_axis=0)
    with pytest.raises(ValueError, match="4 vertices"):
        prompts_from_boxes([bad[:3]], frame_axis=0)
    same = np.array([[0, 2, 3], [0, 2, 8], [0, 9, 8], [0, 9, 3]], float)
    with pytest.raises(ValueError, match="two boxes on frame 0"):
        prompts_from_boxes([same, same + [0, 1, 1]], [4, 4], frame_axis=0)


def test_box_and_clicks_of_one_object_are_merged_into_one_call() -> None:
    clicks = prompts_from_points([[2, 5, 5], [2, 6, 6], [3, 1, 1]], [1, 0, 1], [7, 7, 7],
                                 frame_axis=0)
    boxes = prompts_from_boxes([np.array([[2, 0, 0], [2, 0, 9], [2, 9, 9], [2, 9, 0]])], [7],
                               frame_axis=0)
    merged = merge_prompts(clicks, boxes)
    assert [(p.frame_idx, p.obj_id) for p in merged] == [(2, 7), (3, 7)]
    np.testing.assert_array_equal(merged[0].box, [0, 0, 9, 9])
    np.testing.assert_array_equal(merged[0].labels, [1, 0])
    assert merged[1].box is None


def test_prompts_from_dict() -> None:
    prompts = prompts_from_dict({
        (0, 1): {"points": [[3, 4]]},
        (5, 2): {"box": [0, 0, 4, 4], "points": [[1, 1]], "labels": [0]},
    })
    assert prompts[0] == FramePrompt(0, 1, np.array([[3, 4]]), np.array([1]))
    assert prompts[1] == FramePrompt(
        5, 2, np.array([[1, 1]]), np.array([0]), np.array([0, 0, 4, 4])
    )
    with pytest.raises(ValueError, match="unknown entries"):
        prompts_from_dict({(0, 1): {"point": [[1, 1]]}})
    with pytest.raises(ValueError, match="points or a box"):
        prompts_from_dict({(0, 1): {}})


def test_frame_prompt_is_immutable_and_checked() -> None:
    p = FramePrompt(1, 2, [[1.0, 2.0]], [1])
    with pytest.raises(ValueError):
        p.points[0, 0] = 5  # read-only arrays
    with pytest.raises(ValueError, match="obj_id"):
        FramePrompt(0, 0, [[1, 2]], [1])
    with pytest.raises(ValueError, match="x0 <= x1"):
        FramePrompt(0, 1, box=[5, 0, 1, 4])
    with pytest.raises(ValueError, match="labels"):
        FramePrompt(0, 1, [[1, 2]], [2])


# --------------------------------------------------------------------------- features
def test_point_features_from_a_dataframe_and_defaults() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"obj_id": [3, 4], "positive": [True, False], "other": ["a", "b"]})
    positive, ids = point_features(frame, 2)
    np.testing.assert_array_equal(positive, [True, False])
    np.testing.assert_array_equal(ids, [3, 4])
    positive, ids = point_features(None, 3)
    assert positive.all() and (ids == 1).all()
    positive, _ = point_features({"label": [0, 1]}, 2)
    np.testing.assert_array_equal(positive, [False, True])
    positive, _ = point_features({"label": [0, 1], "positive": ["True", "1.0"]}, 2)
    assert positive.all()  # positive wins over label


# --------------------------------------------------------------------------- CSV files
def test_points_csv_written_by_napari(tmp_path: Path, napari_save) -> None:
    save, napari = napari_save
    layer = napari.layers.Points(
        np.array([[0, 10.5, 20.25], [3, 30, 40], [3, 31, 41]]),
        features={"obj_id": [1, 2, 2], "positive": [True, True, False]},
    )
    coords, positive, ids = read_points_csv(save(layer, tmp_path / "points.csv"))
    np.testing.assert_array_equal(coords, layer.data)
    np.testing.assert_array_equal(positive, [True, True, False])
    np.testing.assert_array_equal(ids, [1, 2, 2])
    prompts = prompts_from_points(coords, positive, ids, frame_axis=0)
    assert [(p.frame_idx, p.obj_id) for p in prompts] == [(0, 1), (3, 2)]
    np.testing.assert_array_equal(prompts[0].points, [[20.25, 10.5]])


def test_points_csv_with_text_features_and_without_features(tmp_path: Path, napari_save) -> None:
    save, napari = napari_save
    layer = napari.layers.Points(
        np.array([[5.0, 6.0], [7.0, 8.0]]),
        features={"positive": [False, True], "name": ['a, "quoted"', "b"], "obj_id": [9, 9]},
    )
    coords, positive, ids = read_points_csv(save(layer, tmp_path / "text.csv"))
    np.testing.assert_array_equal(coords, [[5, 6], [7, 8]])
    np.testing.assert_array_equal(positive, [False, True])
    np.testing.assert_array_equal(ids, [9, 9])
    plain = napari.layers.Points(np.array([[1.0, 2.0, 3.0]]))
    coords, positive, ids = read_points_csv(save(plain, tmp_path / "plain.csv"))
    assert coords.shape == (1, 3) and positive.tolist() == [True] and ids.tolist() == [1]


def test_shapes_csv_written_by_napari(tmp_path: Path, napari_save) -> None:
    save, napari = napari_save
    rects = [np.array([[1, 2, 3], [1, 2, 8], [1, 9, 8], [1, 9, 3]], float),
             np.array([[4, 0, 0], [4, 0, 5], [4, 5, 5], [4, 5, 0]], float)]
    layer = napari.layers.Shapes(rects, shape_type="rectangle")
    read, ids = read_shapes_csv(save(layer, tmp_path / "boxes.csv"))
    assert ids is None and len(read) == 2
    for got, want in zip(read, layer.data):
        np.testing.assert_array_equal(got, want)
    prompts = prompts_from_boxes(read, ids, frame_axis=0)
    assert [(p.frame_idx, p.obj_id, p.box.tolist()) for p in prompts] == [
        (1, 1, [3, 2, 8, 9]), (4, 2, [0, 0, 5, 5])
    ]
    mixed = napari.layers.Shapes(
        [rects[0], np.array([[1, 2, 2], [1, 5, 5], [1, 3, 8], [1, 4, 4]], float)],
        shape_type=["rectangle", "ellipse"],
    )
    with pytest.raises(ValueError, match="shape 1 is a ellipse; only rectangles"):
        read_shapes_csv(save(mixed, tmp_path / "mixed.csv"))


def test_shapes_csv_with_obj_id_column(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(
        "index,shape-type,vertex-index,axis-0,axis-1,axis-2,obj_id\n"
        + "".join(f"0,rectangle,{i},2,{y},{x},5\n" for i, (y, x) in
                  enumerate([(0, 0), (0, 4), (4, 4), (4, 0)]))
    )
    rects, ids = read_shapes_csv(path)
    assert ids.tolist() == [5]
    (p,) = prompts_from_boxes(rects, ids, frame_axis=0)
    assert (p.frame_idx, p.obj_id) == (2, 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("index,x,y\n0,1,2\n", "no axis-0, axis-1"),
        ("index,axis-0,axis-1\n0,1\n", "row 2: 2 values for 3 columns"),
        ("index,axis-0,axis-1\n0,1,abc\n", "row 2: axis-1 of point 0 is not a number"),
        ("index,axis-0,axis-1\n0,1,2\n1,nan,2\n", "row 3: axis-0 of point 1 is nan"),
        ("index,axis-0,axis-2\n0,1,2\n", "without gaps"),
        ("index,axis-0,axis-1,positive\n0,1,2,maybe\n", "positive must be True/False"),
        ("index,axis-0,axis-1,obj_id\n0,1,2,0\n", "obj_id of point 0 must be >= 1"),
        ("index,axis-0,axis-1,label\n0,1,2,3\n", "label must be 1"),
        ("index,shape-type,vertex-index,axis-0,axis-1\n0,rectangle,0,1,2\n", "Shapes CSV"),
    ],
)
def test_malformed_points_csv(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_points_csv(path)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_points_csv(tmp_path / "nope.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ValueError):
        read_points_csv(binary)
    with pytest.raises(ValueError, match="index/shape-type"):
        (tmp_path / "pts.csv").write_text("axis-0,axis-1\n1,2\n")
        read_shapes_csv(tmp_path / "pts.csv")


# --------------------------------------------------------------------------- validation
def test_validate_prompts_clamps_within_napari_pixel_extent() -> None:
    (p,) = validate_prompts([FramePrompt(0, 1, [[-0.4, 63.4]], [1])], 2, 64, 32)
    np.testing.assert_array_equal(p.points, [[0, 63]])
    (b,) = validate_prompts([FramePrompt(1, 1, box=[-3, 5, 40, 70])], 2, 64, 32)
    np.testing.assert_array_equal(b.box, [0, 5, 32, 64])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (FramePrompt(0, 1, [[5, 5], [32, 3]], [1, 1]),
         r"point \(x, y\) = \(32, 3\) of object 1 on frame 0 is outside the image \(32 × 64"),
        (FramePrompt(0, 2, [[5, -0.6]], [1]), r"\(5, -0.6\) of object 2"),
        (FramePrompt(2, 1, [[5, 5]], [1]), r"on frame 2, outside the stack \(frames 0..1\)"),
        (FramePrompt(0, 1, box=[40, 0, 50, 10]), "lies outside the image"),
        (FramePrompt(0, 1, box=[4, 0, 4, 10]), "has no area"),
    ],
)
def test_validate_prompts_names_the_offender(prompt: FramePrompt, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_prompts([prompt], 2, 64, 32)
