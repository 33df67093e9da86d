"""Python API (segment_image, segment_everything, track) on a tiny random-weight model: shapes,
dtypes, and agreement with the predictors run directly.

The weights are random, so masks are not meaningful; what is tested is that the API feeds the
predictors exactly what a direct caller would (same prompts, same frames, same options) and
turns their logits into labels by the documented rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_sam2
from napari_sam2 import api
from napari_sam2._sample_data import make_timelapse
from napari_sam2.core.annotations import FramePrompt
from napari_sam2.core.annotations.labels import masks_to_labels
from napari_sam2.core.image.mask_generator import SAM2AutomaticMaskGenerator
from napari_sam2.core.image.predictor import SAM2ImagePredictor
from napari_sam2.core.video.predictor import SAM2VideoPredictor
from napari_sam2.models import checkpoints

CONFIG, SIZE = "sam2.1_hiera_t", 256
CLICK = FramePrompt(2, 5, np.array([[32.0, 32.0]]), np.array([1]))  # the dividing cell
BOX = FramePrompt(0, 2, box=np.array([0.0, 40.0, 20.0, 63.0]))


@pytest.fixture(scope="module")
def checkpoint(official_checkpoint) -> Path:
    return official_checkpoint(CONFIG, SIZE)


@pytest.fixture(scope="module")
def video_model(checkpoint):
    return checkpoints.load_model(checkpoint, device="cpu", image_size=SIZE, video=True)


@pytest.fixture(scope="module")
def image_model(checkpoint):
    return checkpoints.load_model(checkpoint, device="cpu", image_size=SIZE)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return np.ascontiguousarray(make_timelapse()[:4, 32:96, 32:96])  # 4×64×64 uint16


def _direct_labels(model, stack, prompts, **propagate_kwargs) -> np.ndarray:
    """Labels computed with the video predictor by hand: highest logit wins, if positive."""
    predictor = SAM2VideoPredictor(model)
    state = predictor.init_state(stack)
    for p in prompts:
        predictor.add_new_points_or_box(state, p.frame_idx, p.obj_id, p.points, p.labels,
                                        box=p.box)
    expected = np.zeros(stack.shape, np.uint16)
    for frame, ids, logits in predictor.propagate(state, **propagate_kwargs):
        logits = logits[:, 0].numpy()
        best = logits.argmax(axis=0)
        expected[frame] = np.where(logits.max(axis=0) > 0, np.array(ids)[best], 0)
    state.close()
    return expected


@pytest.fixture(scope="module")
def expected(video_model, stack) -> np.ndarray:
    return _direct_labels(video_model, stack, [BOX, CLICK], direction="both")


def test_lazy_exports() -> None:
    assert napari_sam2.track is api.track
    assert napari_sam2.segment_image is api.segment_image
    assert napari_sam2.segment_everything is api.segment_everything
    assert napari_sam2.FramePrompt is FramePrompt
    assert {"track", "segment_image", "prompts_from_points"} <= set(dir(napari_sam2))


# --------------------------------------------------------------------------- track
def test_track_matches_the_video_predictor(video_model, stack, expected) -> None:
    labels = api.track(stack, [CLICK, BOX], model=video_model, direction="both")
    assert labels.shape == stack.shape and labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, expected)
    # Both objects are in the label volume, each on its prompted frame (for these weights).
    assert (labels[2] == 5).any() and (labels[0] == 2).any()


def test_track_from_a_tiff_into_a_tiff_memmap(tmp_path: Path, video_model, stack, expected):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    out = tifffile.memmap(tmp_path / "labels.tif", shape=stack.shape, dtype=np.uint32,
                          photometric="minisblack")
    out[:] = 99  # stale content must not survive
    prompts = {(2, 5): {"points": [[32, 32]]}, (0, 2): {"box": [0, 40, 20, 63]}}
    result = api.track(path, prompts, model=SAM2VideoPredictor(video_model), out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


def test_track_within_a_frame_range(video_model, stack, expected) -> None:
    labels = api.track(stack, [CLICK], model=video_model, direction="forward",
                       frame_range=(1, 3))
    only_click = _direct_labels(video_model, stack, [CLICK], direction="forward",
                                frame_range=(1, 3))
    np.testing.assert_array_equal(labels, only_click)
    assert not labels[[0, 1]].any()  # never tracked


def test_track_checks_prompts_and_outputs_before_tracking(video_model, stack) -> None:
    outside = FramePrompt(1, 1, np.array([[70.0, 3.0]]), np.array([1]))
    with pytest.raises(ValueError, match=r"\(70, 3\) of object 1 on frame 1 is outside"):
        api.track(stack, [outside], model=video_model)
    late = FramePrompt(9, 1, np.array([[7.0, 3.0]]), np.array([1]))
    with pytest.raises(ValueError, match="frames 0..3"):
        api.track(stack, [late], model=video_model)
    with pytest.raises(ValueError, match="out has shape"):
        api.track(stack, [CLICK], model=video_model, out=np.zeros((4, 64, 63), np.uint16))
    big_id = FramePrompt(0, 300, np.array([[7.0, 3.0]]), np.array([1]))
    with pytest.raises(ValueError, match="cannot hold object id 300"):
        api.track(stack, [big_id], model=video_model, out=np.zeros(stack.shape, np.uint8))
    with pytest.raises(ValueError, match="direction"):
        api.track(stack, [CLICK], model=video_model, direction="sideways")
    with pytest.raises(TypeError, match="prompts must be"):
        api.track(stack, [[1, 2]], model=video_model)


def test_labels_from_logits_gives_each_pixel_to_the_highest_logit() -> None:
    logits = np.full((3, 1, 2, 3), -1.0, np.float32)
    logits[0, 0, 0, :2] = [2.0, 5.0]
    logits[1, 0, 0, 1:] = [6.0, 1.0]  # overlaps object 0 at (0, 1) with a higher logit
    logits[2, 0, 1, 2] = 0.0  # not above the threshold
    labels = api.labels_from_logits([7, 300, 4], logits)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, [[7, 300, 300], [0, 0, 0]])


# --------------------------------------------------------------------------- 2D
def test_segment_image_matches_the_image_predictor(image_model, stack) -> None:
    image = stack[0]  # uint16: normalised the same way by both
    predictor = SAM2ImagePredictor(image_model)
    predictor.set_image(image)
    points, labels = np.array([[20.0, 30.0], [50.0, 10.0]]), np.array([1, 0])
    masks, _, _ = predictor.predict(points, labels, multimask_output=False)
    mask = api.segment_image(image, points, labels, model=image_model)
    assert mask.shape == image.shape and mask.dtype == bool
    np.testing.assert_array_equal(mask, masks[0] > 0)

    masks, scores, _ = predictor.predict(points[:1], np.array([1]), multimask_output=True)
    best = api.segment_image(image, points[:1], model=predictor, multimask=True)
    np.testing.assert_array_equal(best, masks[np.argmax(scores)] > 0)

    box = np.array([5, 5, 40, 50])
    masks, _, _ = predictor.predict(box=box, multimask_output=False)
    np.testing.assert_array_equal(api.segment_image(image, box=box, model=predictor),
                                  masks[0] > 0)
    with pytest.raises(ValueError, match="points and/or a box"):
        api.segment_image(image, model=predictor)


def test_segment_everything_matches_the_generator(image_model, stack) -> None:
    image = stack[3]
    options = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    records = SAM2AutomaticMaskGenerator(image_model, **options).generate(image)
    labels = api.segment_everything(image, model=image_model, **options)
    assert labels.shape == image.shape and labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, masks_to_labels(records, shape=image.shape))
    assert labels.max() == len(records) > 0


def test_objects_are_reused_and_names_or_paths_are_loaded(
    monkeypatch, checkpoint, image_model, stack
) -> None:
    image = stack[1]
    by_object = api.segment_image(image, [[10, 10]], model=image_model)
    by_path = api.segment_image(image, [[10, 10]], model=checkpoint, device="cpu",
                                image_size=SIZE)
    np.testing.assert_array_equal(by_object, by_path)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model object was given; nothing must be loaded")

    monkeypatch.setattr(checkpoints, "load_model", no_loading)
    generator = SAM2AutomaticMaskGenerator(image_model, points_per_side=2)
    assert api.segment_everything(image, model=generator).shape == image.shape
    with pytest.raises(ValueError, match="amg_options"):
        api.segment_everything(image, model=generator, points_per_side=4)
    with pytest.raises(TypeError, match="model must be"):
        api.segment_image(image, [[10, 10]], model=42)


def test_precision_is_applied_to_a_given_network_and_to_loaded_ones(checkpoint, stack) -> None:
    net = checkpoints.load_model(checkpoint, device="cpu", image_size=SIZE)
    from napari_sam2.models.precision_policy import resolve_precision

    assert net.precision == resolve_precision("auto", "cpu").mode  # the default
    image, points = stack[0], np.array([[20.0, 30.0]])
    strict = api.segment_image(image, points, model=net, precision="fp32")
    assert net.precision == "fp32"
    approx = api.segment_image(image, points, model=net, precision="bf16")
    assert net.precision == "bf16" and approx.shape == strict.shape
    api.segment_image(image, points, model=net)  # None: left as it is
    assert net.precision == "bf16"
    with pytest.raises(ValueError, match="fp32, fast, bf16"):
        api.segment_image(image, points, model=net, precision="double")
    loaded = api._load(checkpoint, None, "cpu", SIZE, video=False, precision="fp32")
    assert loaded.precision == "fp32"
