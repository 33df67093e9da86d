"""SAM2ImagePredictor: parity with sam2==1.1.0's predictor, mask clean-up and input validation."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import sam2.utils.misc as ref_misc
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor as RefPredictor
from sam2.utils.transforms import SAM2Transforms

from napari_sam2.core.image.predictor import SAM2ImagePredictor
from napari_sam2.core.image.prompts import Prompts
from napari_sam2.core.image.transforms import ImageTransforms, fill_holes_and_sprinkles
from napari_sam2.core.stacks.model_input import check_image
from napari_sam2.models.postprocessing import get_connected_components

CONFIG, SIZE = "sam2.1_hiera_t", 256
LOW = SIZE // 4  # low-resolution mask side
TOL = 1e-4
H, W = 300, 400  # not square, so the coordinate transforms matter

# The reference builds its transforms with torch.jit.script, deprecated in recent torch.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A noisy RGB image with a bright rectangle and a dark disk."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, size=(h, w, 3), dtype=np.uint8)
    img[h // 5 : h // 2, w // 6 : w // 2] = (230, 200, 40)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 0.65 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.15 * min(h, w)) ** 2] = (10, 30, 200)
    return img


def _ref_predictor(model: Any, **kwargs: Any) -> RefPredictor:
    pred = RefPredictor(model, **kwargs)
    # The reference hard-codes the feature sizes of a 1024-pixel model.
    pred._bb_feat_sizes = [(SIZE // 4,) * 2, (SIZE // 8,) * 2, (SIZE // 16,) * 2]
    return pred


@pytest.fixture(scope="module")
def models(paired_models):
    return paired_models(CONFIG, SIZE)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return _image(H, W, 0)


@pytest.fixture(scope="module")
def predictors(models, image) -> tuple[RefPredictor, SAM2ImagePredictor]:
    ref_model, our_model = models
    ref, ours = _ref_predictor(ref_model), SAM2ImagePredictor(our_model)
    ref.set_image(image)
    ours.set_image(image)
    return ref, ours


def assert_same_outputs(ref_out, our_out, ref_logits=None) -> None:
    """Masks equal (or differing only where |logit| < 1e-3), IoUs and low-res logits close."""
    ref_masks, ref_iou, ref_low = (np.asarray(x) for x in ref_out)
    masks, iou, low = our_out
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype == np.float32
    assert iou.shape == ref_iou.shape and low.shape == ref_low.shape
    differ = masks != ref_masks
    if differ.any():
        assert ref_logits is not None, "binary masks differ"
        assert differ.mean() < 1e-3 and (np.abs(ref_logits[differ]) < 1e-3).all()
    assert np.abs(iou - ref_iou).max() <= TOL
    assert np.abs(low - ref_low).max() <= TOL


def _compare(ref: RefPredictor, ours: SAM2ImagePredictor, **kwargs: Any) -> None:
    ref_logits = ref.predict(**{**kwargs, "return_logits": True})[0]
    if kwargs.get("return_logits"):  # logits: equal to float32 rounding
        ref_out, our_out = ref.predict(**kwargs), ours.predict(**kwargs)
        for a, b in zip(ref_out, our_out):
            assert a.shape == b.shape and np.abs(a - b).max() <= TOL
        return
    assert_same_outputs(ref.predict(**kwargs), ours.predict(**kwargs), ref_logits)


# ----------------------------------------------------------------------------- parity
PROMPTS: dict[str, dict[str, Any]] = {
    "one_click": dict(point_coords=[[120, 110]], point_labels=[1]),
    "two_pos_one_neg": dict(
        point_coords=[[120, 110], [300, 200], [20, 280]], point_labels=[1, 1, 0]
    ),
    "box": dict(box=[60, 50, 210, 160]),
    "box_and_points": dict(
        box=[60, 50, 210, 160], point_coords=[[120, 110], [250, 60]], point_labels=[1, 0]
    ),
    "edge_points": dict(point_coords=[[0, 0], [W - 1, H - 1]], point_labels=[1, 1]),
    "full_image_box": dict(box=[0, 0, W, H]),
    "batched_points": dict(
        point_coords=np.array(
            [[[120, 110], [10, 10]], [[280, 200], [300, 190]], [[50, 250], [60, 260]]]
        ),
        point_labels=np.array([[1, 0], [1, 1], [1, -1]]),  # -1: padding
    ),
    "batched_boxes": dict(box=np.array([[60, 50, 210, 160], [220, 140, 360, 260]])),
    "batched_boxes_and_points": dict(
        box=np.array([[60, 50, 210, 160], [220, 140, 360, 260]]),
        point_coords=np.array([[[120, 110]], [[280, 200]]]),
        point_labels=np.array([[1], [0]]),
    ),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("name", list(PROMPTS))
def test_predict_matches_reference(predictors, name: str, multimask: bool) -> None:
    ref, ours = predictors
    _compare(ref, ours, **PROMPTS[name], multimask_output=multimask)


def test_return_logits_and_normalized_coords(predictors) -> None:
    ref, ours = predictors
    _compare(ref, ours, **PROMPTS["two_pos_one_neg"], return_logits=True)
    points = np.array([[120, 110], [300, 200]], dtype=np.float32) / np.array([W, H], np.float32)
    box = np.array([60 / W, 50 / H, 210 / W, 160 / H], dtype=np.float32)
    for multimask in (True, False):
        _compare(ref, ours, point_coords=points, point_labels=[1, 0], box=box,
                 normalize_coords=False, multimask_output=multimask)


def test_mask_input_from_previous_prediction(predictors) -> None:
    ref, ours = predictors
    _, iou, low = ref.predict(**PROMPTS["one_click"])
    previous = low[np.argmax(iou)][None]  # 1×h×w
    _compare(ref, ours, point_coords=[[120, 110], [160, 140]], point_labels=[1, 1],
             mask_input=previous, multimask_output=False)
    _compare(ref, ours, mask_input=previous, multimask_output=False)  # mask alone
    batched = np.stack([previous, -previous])  # 2×1×h×w with 2 point sets
    _compare(ref, ours, point_coords=[[[120, 110]], [[300, 200]]], point_labels=[[1], [1]],
             mask_input=batched)


def test_low_level_predict_as_used_by_mask_generators(predictors) -> None:
    ref, ours = predictors
    points = torch.tensor([[10.0, 20.0], [200.0, 100.0], [390.0, 290.0], [120.0, 110.0]])
    outs = []
    for pred in (ref, ours):
        in_points = pred._transforms.transform_coords(points, normalize=True, orig_hw=(H, W))
        labels = torch.ones(len(points), dtype=torch.int)
        outs.append(pred._predict(in_points[:, None], labels[:, None], return_logits=True))
    for a, b in zip(*outs):
        assert a.shape == b.shape and (a - b).abs().max() <= TOL


def test_image_embedding_and_state(predictors) -> None:
    ref, ours = predictors
    assert (ref.get_image_embedding() - ours.get_image_embedding()).abs().max() <= TOL
    for a, b in zip(ref._features["high_res_feats"], ours._features["high_res_feats"]):
        assert (a - b).abs().max() <= TOL
    assert ours.is_image_set and ours._is_image_set and not ours._is_batch
    assert ours._orig_hw == ours.orig_hw == [(H, W)] == [tuple(hw) for hw in ref._orig_hw]
    assert ours.device == torch.device("cpu")


def test_grey_float_and_pil_images(models, image, predictors) -> None:
    ref, _ = predictors
    ours = SAM2ImagePredictor(models[1])
    grey = image[..., 1]
    ours.set_image(grey)
    ref_grey = _ref_predictor(models[0])
    ref_grey.set_image(np.repeat(grey[..., None], 3, axis=2))
    assert (ref_grey.get_image_embedding() - ours.get_image_embedding()).abs().max() <= TOL
    _compare(ref_grey, ours, **PROMPTS["box_and_points"])

    ours.set_image(image.astype(np.float32) / np.float32(255))
    assert (ref.get_image_embedding() - ours.get_image_embedding()).abs().max() <= TOL
    _compare(ref, ours, **PROMPTS["one_click"])

    from PIL import Image

    np.testing.assert_array_equal(check_image(Image.fromarray(image)), image)
    np.testing.assert_array_equal(check_image(Image.fromarray(grey)), grey)
    np.testing.assert_array_equal(check_image(grey[..., None]), grey)


BATCH_HW = [(H, W), (200, 250), (256, 180)]


@pytest.fixture(scope="module")
def batch_predictors(models) -> tuple[RefPredictor, SAM2ImagePredictor]:
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(BATCH_HW, start=1)]
    ref, ours = _ref_predictor(models[0]), SAM2ImagePredictor(models[1])
    ref.set_image_batch(images)
    ours.set_image_batch(images)
    return ref, ours


def test_batch_of_images_matches_reference(batch_predictors) -> None:
    ref, ours = batch_predictors
    assert ours._is_batch and ours.orig_hw == BATCH_HW
    assert (ref.get_image_embedding() - ours.get_image_embedding()).abs().max() <= TOL
    kwargs = dict(
        point_coords_batch=[np.array([[100, 80]]), None, np.array([[[90, 60]], [[100, 200]]])],
        point_labels_batch=[np.array([1]), None, np.array([[1], [1]])],
        box_batch=[None, np.array([30, 20, 120, 150]), None],
    )
    for multimask in (True, False):
        ref_out = ref.predict_batch(**kwargs, multimask_output=multimask)
        our_out = ours.predict_batch(**kwargs, multimask_output=multimask)
        ref_logits = ref.predict_batch(**kwargs, multimask_output=multimask, return_logits=True)[0]
        for i in range(len(BATCH_HW)):
            assert_same_outputs([r[i] for r in ref_out], [o[i] for o in our_out], ref_logits[i])
    with pytest.raises(RuntimeError, match="predict_batch"):
        ours.predict(point_coords=[[1, 1]], point_labels=[1])


def test_from_pretrained(official_checkpoint) -> None:
    pred = SAM2ImagePredictor.from_pretrained(
        official_checkpoint(CONFIG, SIZE), config=CONFIG, device="cpu", image_size=SIZE,
        mask_threshold=0.5, max_hole_area=8,
    )
    assert pred.model.image_size == SIZE and pred.mask_threshold == 0.5
    assert pred._transforms.max_hole_area == 8 and not pred.is_image_set
    from napari_sam2.models.build import build_model

    # the precision is the device's own by default, as everywhere else
    assert pred.model.precision == build_model(CONFIG, image_size=SIZE).precision


# ----------------------------------------------------------------------------- clean-up
def _crafted_logits() -> torch.Tensor:
    """1×1×32×32 logits: a square with a 2×2 and a 4×4 hole, a 1-pixel and a 3×3 speck."""
    x = torch.full((1, 1, 32, 32), -5.0)
    x[..., 4:20, 4:20] = 5.0
    x[..., 6:8, 6:8] = -3.0  # hole of 4 pixels
    x[..., 12:16, 12:16] = -3.0  # hole of 16 pixels
    x[..., 26, 26] = 2.0  # speck of 1 pixel
    x[..., 24:27, 2:5] = 2.0  # speck of 9 pixels
    return x


def test_fill_holes_and_remove_sprinkles_by_construction() -> None:
    x = _crafted_logits()
    filled = fill_holes_and_sprinkles(x, 0.0, max_hole_area=4)
    assert (filled[..., 6:8, 6:8] == 10.0).all()  # threshold + 10
    assert torch.equal(filled[..., 12:16, 12:16], x[..., 12:16, 12:16])
    assert ((filled != x).sum() == 4) and (filled[x > 0] == x[x > 0]).all()
    cleaned = fill_holes_and_sprinkles(x, 0.0, max_sprinkle_area=1)
    assert cleaned[0, 0, 26, 26] == -10.0 and (cleaned != x).sum() == 1
    both = fill_holes_and_sprinkles(x, 1.5, max_hole_area=16, max_sprinkle_area=9)
    assert (both[..., 12:16, 12:16] == 11.5).all() and (both[..., 24:27, 2:5] == -8.5).all()
    assert (both[..., 4:20, 4:20] > 1.5).all() and (both[..., 20:, :] <= 1.5).all()
    labels, areas = get_connected_components(torch.eye(4)[None, None] > 0)  # 8-connected
    assert labels.max() == 1 and (areas[labels > 0] == 4).all()


def test_postprocessing_matches_reference_semantics(monkeypatch, predictors) -> None:
    # Run the reference's clean-up on the CPU by giving it our connected components.
    monkeypatch.setattr(ref_misc, "get_connected_components", get_connected_components)
    _, ours = predictors
    real = torch.from_numpy(ours.predict(**PROMPTS["one_click"])[2])[None]  # 1×3×h×w
    crafted = torch.nn.functional.pad(_crafted_logits(), (16, 16, 16, 16), value=-5.0)
    for logits in (real, crafted.expand(2, 3, -1, -1)):
        for threshold, holes, specks in [(0.0, 4, 0), (0.0, 0, 9), (0.5, 16, 9), (-1.0, 40, 40)]:
            ref_tf = SAM2Transforms(LOW, threshold, holes, specks)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the reference warns when it skips the clean-up
                expected = ref_tf.postprocess_masks(logits, (H, W))
            got = ImageTransforms(LOW, threshold, holes, specks).postprocess_masks(logits, (H, W))
            assert torch.equal(got, expected)


def test_predictor_cleans_masks(models, predictors) -> None:
    _, plain = predictors
    cleaned = SAM2ImagePredictor(models[1], max_hole_area=LOW * LOW)
    cleaned._state = plain._state  # same image, no second embedding
    masks = cleaned.predict(**PROMPTS["one_click"])[0]
    assert (masks == 1).all()  # every background region is a "hole" of at most h·w pixels
    cleaned = SAM2ImagePredictor(models[1], max_sprinkle_area=LOW * LOW)
    cleaned._state = plain._state
    assert (cleaned.predict(**PROMPTS["one_click"])[0] == 0).all()


# ----------------------------------------------------------------------------- bad input
ONE = dict(point_coords=[[1, 1]], point_labels=[1])
BAD_PROMPTS: list[tuple[dict[str, Any], str]] = [
    (dict(), "No prompt"),
    (dict(point_coords=[10, 20], point_labels=[1]), "point_coords must be N×2"),
    (dict(point_coords=[[10, 20, 30]], point_labels=[1]), "point_coords must be N×2"),
    (dict(point_coords=np.zeros((1, 1, 1, 2)), point_labels=[[[1]]]), "point_coords must be N×2"),
    (dict(point_coords=[["a", "b"]], point_labels=[1]), "point_coords must be a numeric"),
    (dict(point_coords=[[10, np.nan]], point_labels=[1]), "point_coords contains NaN"),
    (dict(point_coords=[[10, 20]]), "point_labels"),
    (dict(point_labels=[1]), "point_labels were given without point_coords"),
    (dict(point_coords=[[10, 20], [30, 40]], point_labels=[1]), "point_labels must have shape"),
    (dict(point_coords=[[10, 20]], point_labels=[5]), "point_labels must be 1"),
    (dict(point_coords=[[10, 20]], point_labels=[0.5]), "point_labels must be integers"),
    (dict(point_coords=[[-1, 20]], point_labels=[1]),
     r"point_coords outside the image \(image is 400×300"),
    (dict(point_coords=[[W, 20]], point_labels=[1]), "point_coords outside"),
    (dict(point_coords=[[10, H]], point_labels=[1]), "point_coords outside"),
    (dict(point_coords=[[0.5, 1.5]], point_labels=[1], normalize_coords=False),
     "point_coords outside"),
    (dict(box=[200, 50, 100, 160]), "box must be XYXY"),
    (dict(box=[10, 160, 100, 50]), "box must be XYXY"),
    (dict(box=[10, 20, 30]), "box must be 4 or B×4"),
    (dict(box=np.zeros((2, 5))), "box must be 4 or B×4"),
    (dict(box=[10, 20, W + 1, 50]), "box outside the image"),
    (dict(box=np.array([[0, 0, 5, 5], [0, 0, 6, 6]]), point_coords=[[1, 1]], point_labels=[1]),
     "same batch size"),
    (dict(**ONE, mask_input=np.zeros((LOW, LOW))), "mask_input must be 1×64×64"),
    (dict(**ONE, mask_input=np.zeros((1, 1, 32, 32))), "mask_input must be"),
    (dict(**ONE, mask_input=np.zeros((1, 2, LOW, LOW))), "mask_input must be"),
    (dict(**ONE, mask_input=np.full((1, LOW, LOW), np.inf)), "mask_input contains NaN"),
    (dict(point_coords=np.ones((3, 1, 2)), point_labels=np.ones((3, 1)),
          mask_input=np.zeros((2, 1, LOW, LOW))),
     "mask_input must have batch size 1 or 3"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_PROMPTS)
def test_bad_prompts_raise_value_error(predictors, kwargs: dict[str, Any], message: str) -> None:
    _, ours = predictors
    with pytest.raises(ValueError, match=message):
        ours.predict(**kwargs)


def test_empty_points_count_as_absent(predictors) -> None:
    _, ours = predictors
    box_only = ours.predict(box=PROMPTS["box"]["box"])
    with_empty = ours.predict(
        box=PROMPTS["box"]["box"], point_coords=np.zeros((0, 2)), point_labels=[]
    )
    for a, b in zip(box_only, with_empty):
        np.testing.assert_array_equal(a, b)


BAD_IMAGES: list[tuple[Any, type[Exception], str]] = [
    (np.zeros((0, 0, 3), np.uint8), ValueError, "at least 2×2"),
    (np.zeros((1, 1, 3), np.uint8), ValueError, "at least 2×2"),
    (np.zeros((1, 50), np.uint8), ValueError, "at least 2×2"),
    (np.zeros((2, 30, 40, 3), np.uint8), ValueError, "one 2D image"),
    (np.zeros((1, 2, 30, 40, 3), np.uint8), ValueError, "one 2D image"),
    (np.zeros(5, np.uint8), ValueError, "one 2D image"),
    (np.zeros((30, 40, 8), np.uint16), ValueError, "channel"),
    (np.zeros((30, 40), np.complex64), ValueError, "one 2D image|dtype"),
    ([[1, 2], [3, 4]], TypeError, "numpy array"),
    (torch.zeros(30, 40, 3), TypeError, "numpy array"),
]


@pytest.mark.parametrize(("image", "error", "message"), BAD_IMAGES)
def test_bad_images_raise(models, image: Any, error: type[Exception], message: str) -> None:
    pred = SAM2ImagePredictor(models[1])
    with pytest.raises(error, match=message):
        pred.set_image(image)
    assert not pred.is_image_set


def test_misuse_raises_clear_errors(models, predictors) -> None:
    pred = SAM2ImagePredictor(models[1])
    with pytest.raises(RuntimeError, match=r"call \.set_image\(\.\.\.\) before \.predict"):
        pred.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(RuntimeError, match="set_image"):
        pred.get_image_embedding()
    with pytest.raises(TypeError, match="image_list must be a list"):
        pred.set_image_batch(np.zeros((2, 30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="image_list is empty"):
        pred.set_image_batch([])
    with pytest.raises(ValueError, match=r"image_list\[1\]"):
        pred.set_image_batch([np.zeros((30, 40, 3), np.uint8), np.zeros((2, 30, 40, 3), np.uint8)])
    with pytest.raises(RuntimeError, match="set_image_batch"):
        predictors[1].predict_batch([np.array([[1, 1]])], [np.array([1])])
    with pytest.raises(ValueError, match="max_hole_area"):
        SAM2ImagePredictor(models[1], max_hole_area=-1)
    with pytest.raises(ValueError, match="mask_threshold"):
        SAM2ImagePredictor(models[1], mask_threshold=float("nan"))


def test_predict_batch_argument_checks(batch_predictors) -> None:
    _, pred = batch_predictors
    with pytest.raises(ValueError, match="point_coords_batch must be a list with one entry"):
        pred.predict_batch([np.array([[1, 1]])], [np.array([1])])
    with pytest.raises(ValueError, match=r"image 1: point_coords outside .*250×200"):
        pred.predict_batch([[[1, 1]], [[260, 1]], [[1, 1]]], [[1], [1], [1]])
    with pytest.raises(ValueError, match="image 1: No prompt"):
        pred.predict_batch(box_batch=[np.array([0, 0, 5, 5]), None, [0, 0, 5, 5]])


def test_prompts_module_for_reuse() -> None:
    p = Prompts.from_arrays([[1, 2], [3, 4]], [1, 0], box=[0, 0, 5, 5], image_hw=(10, 10))
    assert p.point_coords.shape == (1, 2, 2) and p.point_coords.dtype == np.float32
    assert p.point_labels.dtype == np.int32 and p.box.shape == (1, 4) and p.batch_size == 1
    assert Prompts.from_arrays(require_prompt=False).is_empty
    p = Prompts.from_arrays(torch.tensor([[[1.0, 2.0]]] * 3), torch.ones(3, 1), image_hw=None)
    assert p.batch_size == 3  # no bounds check without image_hw


MICROSCOPY_IMAGES = {
    "uint16": lambda rng: (rng.normal(100, 5, (40, 50)) + 300 * _disc(40, 50)).astype(np.uint16),
    "int64": lambda rng: rng.integers(-500, 500, (40, 50)),
    "bool": lambda rng: _disc(40, 50).astype(bool),
    "float_large_range": lambda rng: rng.normal(1000.0, 50.0, (40, 50)),
    "float_nan": lambda rng: np.where(_disc(40, 50) > 0, np.nan, rng.random((40, 50))),
    "rgba_uint8": lambda rng: rng.integers(0, 256, (40, 50, 4), dtype=np.uint8),
    "two_channels": lambda rng: rng.integers(0, 4000, (40, 50, 2)).astype(np.uint16),
}


def _disc(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2).astype(np.float64)


@pytest.mark.parametrize("kind", sorted(MICROSCOPY_IMAGES))
def test_microscopy_images_are_normalised(models, kind: str) -> None:
    """Images SAM 2 would reject or show black are mapped with normalize_image, recorded,
    and give the same masks as mapping them by hand first."""
    from napari_sam2.core.stacks.normalization import normalize_image

    image = MICROSCOPY_IMAGES[kind](np.random.default_rng(0))
    pred = SAM2ImagePredictor(models[1])
    pred.set_image(image)
    assert pred.normalization is not None and pred.normalization.resolved
    auto = pred.predict(point_coords=[[25, 20]], point_labels=[1])
    mapped, used = normalize_image(image)
    assert used == pred.normalization
    pred.set_image(mapped)
    assert pred.normalization is None
    by_hand = pred.predict(point_coords=[[25, 20]], point_labels=[1])
    for a, b in zip(auto, by_hand):
        np.testing.assert_array_equal(a, b)


def test_explicit_normalization_is_used(models) -> None:
    from napari_sam2.core.stacks.normalization import Normalization

    image = np.linspace(0, 1000, 40 * 50).reshape(40, 50).astype(np.uint16)
    pred = SAM2ImagePredictor(models[1])
    pred.set_image(image, normalization=Normalization(mode="limits", contrast_limits=((0, 500),)))
    assert pred.normalization.contrast_limits == ((0.0, 500.0),)
