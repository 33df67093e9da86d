"""Automatic mask generation: parity with the reference ``sam2==1.1.0`` on shared random
weights, output modes, small-region post-processing, utilities and label images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2.core.annotations.labels import label_dtype, masks_to_labels
from napari_sam2.core.image import amg_utils as U
from napari_sam2.core.image.mask_generator import SAM2AutomaticMaskGenerator
from napari_sam2.core.image.rle import (
    area_from_rle,
    coco_decode_rle,
    coco_encode_rle,
    mask_to_rle,
    rle_to_mask,
)

CONFIG, SIZE = "sam2.1_hiera_t", 256
# Random weights predict weak logits (|logit| < 1) covering much of the image: with the default
# thresholds nothing survives, so the filters are loosened (identically for both sides).
LOOSE = dict(
    pred_iou_thresh=0.0, stability_score_thresh=0.3, stability_score_offset=0.02,
    mask_threshold=0.1, box_nms_thresh=0.95,
)
CASES = {
    "single_crop": dict(points_per_side=8, **LOOSE),
    "crop_layers": dict(points_per_side=4, crop_n_layers=1, **LOOSE),
    "m2m": dict(LOOSE, points_per_side=8, use_m2m=True, stability_score_thresh=0.1,
                mask_threshold=0.2, box_nms_thresh=0.98),
}
RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords",
               "stability_score", "crop_box"}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """200×300 uint8 RGB: four coloured discs on a dark, slightly noisy background."""
    rng = np.random.default_rng(0)
    img = np.full((200, 300, 3), 30, np.int64)
    yy, xx = np.mgrid[:200, :300]
    for cy, cx, r, colour in [(60, 80, 30, (220, 40, 40)), (140, 200, 45, (40, 200, 60)),
                              (100, 250, 20, (60, 60, 230)), (150, 60, 25, (240, 240, 240))]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(paired_models):
    return paired_models(CONFIG, SIZE)


@pytest.fixture(scope="module")
def ours_single(models, image) -> list[dict]:
    return SAM2AutomaticMaskGenerator(models[1], **CASES["single_crop"]).generate(image)


def _reference(model, **opts):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Reference

    amg = Reference(model, **opts)  # its predictor assumes 1024 px; tell it our feature sizes
    amg.predictor._bb_feat_sizes = [(SIZE // 4,) * 2, (SIZE // 8,) * 2, (SIZE // 16,) * 2]
    return amg


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_reference(case, models, image, ours_single):
    ref_model, our_model = models
    expected = _reference(ref_model, **CASES[case]).generate(image)
    got = ours_single if case == "single_crop" else (
        SAM2AutomaticMaskGenerator(our_model, **CASES[case]).generate(image))
    assert len(expected) >= 3, "options too strict: the reference finds too few masks"
    assert len(got) == len(expected)
    unmatched = list(range(len(expected)))
    for rec in got:
        assert set(rec) == RECORD_KEYS and rec["segmentation"].shape == image.shape[:2]
        match = [i for i in unmatched
                 if np.array_equal(expected[i]["segmentation"], rec["segmentation"])]
        assert match, "a mask of ours has no identical reference mask (IoU < 1)"
        ref = expected[match[0]]
        unmatched.remove(match[0])
        for key in ("bbox", "area", "point_coords", "crop_box"):
            assert rec[key] == ref[key], key
        for key in ("predicted_iou", "stability_score"):
            assert rec[key] == pytest.approx(ref[key], abs=1e-4), key
    if case == "crop_layers":  # masks from the whole image and from a smaller crop
        assert len({tuple(r["crop_box"]) for r in got}) >= 2


def test_output_modes_roundtrip(models, image, ours_single):
    opts = CASES["single_crop"]
    rles = SAM2AutomaticMaskGenerator(models[1], output_mode="uncompressed_rle", **opts)
    coco = SAM2AutomaticMaskGenerator(models[1], output_mode="coco_rle", **opts)
    rle_records, coco_records = rles.generate(image), coco.generate(image)
    assert len(rle_records) == len(coco_records) == len(ours_single)
    for binary, rle, cc in zip(ours_single, rle_records, coco_records):
        assert rle["segmentation"]["size"] == cc["segmentation"]["size"] == [200, 300]
        assert np.array_equal(rle_to_mask(rle["segmentation"]), binary["segmentation"])
        assert isinstance(cc["segmentation"]["counts"], str)  # pycocotools' JSON-ready layout
        assert coco_decode_rle(cc["segmentation"]) == rle["segmentation"]
        assert rle["area"] == cc["area"] == binary["area"] == binary["segmentation"].sum()


def test_min_mask_region_area_cleans_masks(models, image, ours_single):
    area = 400
    records = SAM2AutomaticMaskGenerator(
        models[1], min_mask_region_area=area, **CASES["single_crop"]).generate(image)
    assert 0 < len(records) <= len(ours_single)
    before = [r["segmentation"] for r in ours_single]
    assert any(not any(np.array_equal(r["segmentation"], b) for b in before) for r in records)
    for rec in records:
        mask = rec["segmentation"]
        assert not U.remove_small_regions(mask, area, "holes")[1]
        assert not U.remove_small_regions(mask, area, "islands")[1]
        ys, xs = np.nonzero(mask)
        assert rec["area"] == mask.sum()
        assert rec["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]


def test_grey_image_equals_replicated_rgb(models, image):
    amg = SAM2AutomaticMaskGenerator(models[1], points_per_side=4, **LOOSE)
    grey = image[..., 1]
    a, b = amg.generate(grey), amg.generate(np.repeat(grey[..., None], 3, axis=2))
    assert len(a) == len(b) and all(
        np.array_equal(x["segmentation"], y["segmentation"]) for x, y in zip(a, b))
    assert isinstance(amg.generate(image.astype(np.uint16) * 200), list)  # mapped, not refused


def test_from_pretrained_and_empty_result(official_checkpoint, image):
    amg = SAM2AutomaticMaskGenerator.from_pretrained(
        official_checkpoint(CONFIG, SIZE), config=CONFIG, device="cpu", image_size=SIZE,
        points_per_side=2, pred_iou_thresh=0.99, output_mode="coco_rle",
    )
    assert amg.predictor.model.image_size == SIZE and amg.output_mode == "coco_rle"
    assert amg.generate(image) == []  # nothing passes the filter: no records, no error


@pytest.mark.parametrize("kwargs, error", [
    (dict(points_per_side=None), ValueError),
    (dict(point_grids=[np.full((4, 2), 0.5)]), ValueError),  # both given
    (dict(points_per_side=None, point_grids=[np.full((4, 2), 1.5)]), ValueError),
    (dict(points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1), ValueError),
    (dict(output_mode="polygons"), ValueError),
    (dict(box_nms_thresh=1.5), ValueError),
    (dict(points_per_batch=0), ValueError),
    (dict(min_mask_region_area=-1), ValueError),
    (dict(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2), ValueError),
    (dict(pred_iou_threshold=0.5), TypeError),  # misspelt option
])
def test_invalid_options(kwargs, error):
    with pytest.raises(error):
        SAM2AutomaticMaskGenerator(None, **kwargs)


# ------------------------------------------------------------------------------ utilities
def test_utilities_match_reference():
    from sam2.utils import amg as R

    rng = np.random.default_rng(1)
    assert all(np.array_equal(a, b) for a, b in zip(
        R.build_all_layer_point_grids(16, 2, 2), U.build_all_layer_point_grids(16, 2, 2)))
    for size in [(200, 300), (1024, 768), (333, 517)]:
        for layers in range(4):
            assert U.generate_crop_boxes(size, layers, 512 / 1500) == R.generate_crop_boxes(
                size, layers, 512 / 1500)
    masks = torch.from_numpy(rng.random((12, 37, 53)) > 0.8)
    masks[0], masks[1], masks[2] = False, True, False
    masks[2, 5, 7] = True
    assert torch.equal(U.batched_mask_to_box(masks), R.batched_mask_to_box(masks))
    assert mask_to_rle(masks) == R.mask_to_rle_pytorch(masks)
    logits = torch.randn(8, 40, 50) * 3
    assert torch.equal(U.calculate_stability_score(logits, 0.1, 1.0),
                       R.calculate_stability_score(logits, 0.1, 1.0))
    boxes = torch.randint(0, 300, (50, 4))
    for crop in ([0, 0, 300, 200], [50, 60, 250, 180]):
        assert torch.equal(U.is_box_near_crop_edge(boxes, crop, [0, 0, 300, 200]),
                           R.is_box_near_crop_edge(boxes, crop, [0, 0, 300, 200]))


def test_rle_by_construction():
    mask = np.array([[0, 1, 1], [1, 1, 0]], bool)  # column-major: 0 1 | 1 1 | 1 0
    rle = mask_to_rle(torch.from_numpy(mask)[None])[0]
    assert rle == {"size": [2, 3], "counts": [1, 4, 1]} and area_from_rle(rle) == 4
    assert mask_to_rle(torch.ones(1, 2, 2, dtype=torch.bool))[0]["counts"] == [0, 4]
    assert np.array_equal(rle_to_mask(rle), mask)
    assert coco_encode_rle(rle) == {"size": [2, 3], "counts": "141"}
    # a negative delta (20 - 100) and a multi-character value (100), worked out by hand
    assert coco_encode_rle({"size": [5, 25], "counts": [0, 100, 5, 20]})["counts"] == "0T35`M"
    assert coco_decode_rle({"size": [5, 25], "counts": "0T35`M"})["counts"] == [0, 100, 5, 20]
    # a string written by pycocotools for a 50×70 mask: decodes to 3500 pixels, re-encodes same
    text = ("0g05b08J4M2N2NA^O1`0OCO=0E090H080IO68DH;>@C>a0_O_O`0j0OWOF<:CM72I24NL43JM92FN;1ENKO72"
            "L0LO91J0MO92INO0NO122OO0M031O000NO31OO11MO40N011MO41MO21L06OL021L06OL021L06OL021L060J"
            "040L060J040L060J040L060J040L060J040L060J040L060KO31L060KO31L06OL021L06OL021L06OL021MO"
            "41MO21MO40N100NO310O00M0310O00NO1220NO92IONO91KOMO72M0<1EO:2GN63KM34OLM73JF<;=1G_O_Ob0"
            "=AC`07EH=1IO71H090F0:1DO>1_O1b0>2N2N3L6H]O")
    decoded = coco_decode_rle({"size": [50, 70], "counts": text})
    assert sum(decoded["counts"]) == 3500 and min(decoded["counts"]) >= 0
    assert coco_encode_rle(decoded)["counts"] == text
    masks = torch.from_numpy(np.random.default_rng(2).random((5, 9, 11)) > 0.5)
    for m, r in zip(masks, mask_to_rle(masks)):
        assert np.array_equal(rle_to_mask(r), m.numpy())
        assert np.array_equal(rle_to_mask(coco_encode_rle(r)), m.numpy())


def test_remove_small_regions_by_construction():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # 1-pixel hole
    mask[16:18, 16:18] = True  # 4-pixel island
    mask[12, 12] = True  # touches the square diagonally: same region (8-connectivity)
    filled, changed = U.remove_small_regions(mask, 3, "holes")
    assert changed and filled[5, 5] and filled.sum() == mask.sum() + 1
    trimmed, changed = U.remove_small_regions(mask, 5, "islands")
    assert changed and not trimmed[16:18, 16:18].any() and trimmed[12, 12]
    assert U.remove_small_regions(mask, 1, "islands") == (mask, False)
    only_small = np.zeros((10, 10), bool)
    only_small[0, 0], only_small[5:7, 5:7] = True, True
    kept, _ = U.remove_small_regions(only_small, 50, "islands")  # all small: keep the largest
    assert kept.sum() == 4 and kept[5:7, 5:7].all()
    assert U.remove_small_regions(kept, 50, "islands") == (kept, False)  # lone island stays


def test_postprocess_small_regions_prefers_unchanged():
    square = np.zeros((30, 30), bool)
    square[5:20, 5:20] = True
    with_island = square.copy()
    with_island[25, 25] = True
    holed = np.zeros((30, 30), bool)
    holed[22:29, 1:8] = True
    holed[25, 4] = False
    masks = torch.from_numpy(np.stack([with_island, square, holed]))
    data = U.MaskBatch(rles=mask_to_rle(masks), boxes=U.batched_mask_to_box(masks).float().numpy(),
                       iou_preds=np.array([0.9, 0.5, 0.7], np.float32))
    U.postprocess_small_regions(data, 10, 0.7)
    assert data["iou_preds"].tolist() == pytest.approx([0.5, 0.7])  # the duplicate is dropped
    assert np.array_equal(rle_to_mask(data["rles"][0]), square)
    assert rle_to_mask(data["rles"][1]).sum() == 49 and data["boxes"][1].tolist() == [1, 22, 7, 28]


# ------------------------------------------------------------------------------ labels
def test_masks_to_labels_by_construction():
    big, medium, small = (np.zeros((6, 8), bool) for _ in range(3))
    big[0:5, 0:5] = True  # area 25
    medium[3:6, 3:8] = True  # area 15, overlaps big
    small[1:3, 1:3] = True  # area 4, inside big
    expected = np.array([[1, 1, 1, 1, 1, 0, 0, 0],
                         [1, 3, 3, 1, 1, 0, 0, 0],
                         [1, 3, 3, 1, 1, 0, 0, 0],
                         [1, 1, 1, 2, 2, 2, 2, 2],
                         [1, 1, 1, 2, 2, 2, 2, 2],
                         [0, 0, 0, 2, 2, 2, 2, 2]])
    records = [{"segmentation": m, "area": int(m.sum())} for m in (small, big, medium)]
    labels = masks_to_labels(records)
    assert labels.dtype == np.uint16 and np.array_equal(labels, expected)
    as_rle = [{"segmentation": mask_to_rle(torch.from_numpy(r["segmentation"])[None])[0]}
              for r in records]
    as_coco = [{"segmentation": coco_encode_rle(r["segmentation"])} for r in as_rle]
    assert np.array_equal(masks_to_labels(as_rle), expected)
    assert np.array_equal(masks_to_labels(as_coco[::-1], shape=(6, 8)), expected)
    twin = np.zeros((6, 8), bool)
    twin[5, 0:4] = True  # area 4 like `small`: ties keep the input order
    assert masks_to_labels([small, twin])[5, 0] == 2 and masks_to_labels([twin, small])[5, 0] == 1
    empty = masks_to_labels([], shape=(4, 5))
    assert empty.shape == (4, 5) and not empty.any()
    with pytest.raises(ValueError):
        masks_to_labels([])
    with pytest.raises(ValueError):
        masks_to_labels([small], shape=(5, 5))
    assert label_dtype(65535) == np.uint16 and label_dtype(65536) == np.uint32
