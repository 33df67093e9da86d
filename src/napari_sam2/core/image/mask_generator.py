"""Segment everything: SAM 2 prompted with a grid of points, then filtered and de-duplicated.

:class:`SAM2AutomaticMaskGenerator` has the options, defaults and output records of the
reference ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` and, with
``min_mask_region_area=0``, returns the same masks for the same weights and image. On the whole
image (and ``crop_n_layers`` layers of overlapping crops) every grid point is one foreground
click; masks with a low predicted IoU or stability score, or touching an inner crop edge, are
dropped; duplicates are removed by box NMS within a crop (higher predicted IoU wins), then
across crops (smaller crops win).

Deliberate differences from the reference (``sam2==1.1.0``):

* ``min_mask_region_area > 0`` really removes islands and fills holes smaller than that many
  image pixels (scikit-image connected components on the final full-resolution masks, then
  NMS again, preferring unchanged masks -- the original SAM procedure). The reference hands
  the value to its predictor's low-resolution hole filling instead, which needs its CUDA
  extension and is silently skipped without it.
* ``output_mode="coco_rle"`` uses our own encoder (same strings as ``pycocotools``), so
  ``pycocotools`` is not needed.
* Images the predictor takes (H×W×3 or H×W, ``uint8`` or float in [0, 1]) are used as they
  are; other data (16-bit, multichannel, ...) is mapped once for the whole image by
  :func:`napari_sam2.core.stacks.normalization.normalize_image`, so all crops share one mapping.
* Invalid options raise :class:`ValueError` (unknown keywords :class:`TypeError`) up front.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.ops import batched_nms

from ..stacks.model_input import check_image
from ..stacks.normalization import normalize_image
from .amg_utils import (
    MaskBatch,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    postprocess_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .predictor import SAM2ImagePredictor

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base

__all__ = ["OUTPUT_MODES", "SAM2AutomaticMaskGenerator"]

OUTPUT_MODES: tuple[str, ...] = ("binary_mask", "uncompressed_rle", "coco_rle")
# Keywords of the reference's model builders, accepted (and ignored) for drop-in compatibility.
_IGNORED_KWARGS = frozenset(
    {"config_file", "ckpt_path", "device", "mode", "hydra_overrides_extra", "apply_postprocessing"}
)


class SAM2AutomaticMaskGenerator:
    """Masks for everything in an image, from a grid of point prompts.

    Args:
        model: our SAM 2 network (:class:`napari_sam2.models.sam2.SAM2Base`), eval mode.
        points_per_side: grid points per image side (``points_per_side²`` prompts on the
            whole image); exclusive with ``point_grids``.
        points_per_batch: prompts run through the model at once (memory vs. speed).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: logit shift of the stability score's two thresholds.
        mask_threshold: logit above which a pixel is foreground.
        box_nms_thresh: box IoU above which masks of one crop are duplicates.
        crop_n_layers: extra layers of crops; layer ``i`` tiles the image ``2**i × 2**i``.
        crop_nms_thresh: box IoU above which masks of different crops are duplicates.
        crop_overlap_ratio: overlap of first-layer crops, as a fraction of the short side.
        crop_n_points_downscale_factor: layer ``i`` uses ``points_per_side / factor**i`` points.
        point_grids: explicit ``N×2`` (x, y) grids in [0, 1], one per crop layer.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this (pixels).
        output_mode: ``"binary_mask"`` (H×W bool), ``"uncompressed_rle"`` or ``"coco_rle"``.
        use_m2m: refine each mask once with its own low-resolution logits as mask prompt.
        multimask_output: three masks per point (else one).
        store: where the image's (and each crop's) features are kept on disk, as for
            :class:`~napari_sam2.core.image.predictor.SAM2ImagePredictor`: ``None`` the user
            cache, ``False`` nowhere, a path.
    """

    def __init__(
        self,
        model: SAM2Base,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        store: Any = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
        if unknown:
            raise TypeError(f"SAM2AutomaticMaskGenerator got unknown options: {', '.join(unknown)}")
        crop_n_layers = _int_at_least(crop_n_layers, 0, "crop_n_layers")
        crop_n_points_downscale_factor = _int_at_least(
            crop_n_points_downscale_factor, 1, "crop_n_points_downscale_factor"
        )
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            points_per_side = _int_at_least(points_per_side, 1, "points_per_side")
            smallest = points_per_side / crop_n_points_downscale_factor**crop_n_layers
            if int(smallest) < 1:
                raise ValueError(
                    f"points_per_side={points_per_side} leaves no point in crop layer "
                    f"{crop_n_layers} (downscale factor {crop_n_points_downscale_factor})"
                )
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [_check_grid(g, i) for i, g in enumerate(point_grids)]
            if len(self.point_grids) < crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(self.point_grids)} grids, crop_n_layers="
                    f"{crop_n_layers} needs {crop_n_layers + 1} (one per layer)"
                )
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.points_per_batch = _int_at_least(points_per_batch, 1, "points_per_batch")
        self.pred_iou_thresh = _finite(pred_iou_thresh, "pred_iou_thresh")
        self.stability_score_thresh = _finite(stability_score_thresh, "stability_score_thresh")
        self.stability_score_offset = _finite(stability_score_offset, "stability_score_offset")
        if self.stability_score_offset < 0:
            raise ValueError(f"stability_score_offset must be >= 0, got {stability_score_offset}")
        self.mask_threshold = _finite(mask_threshold, "mask_threshold")
        self.box_nms_thresh = _finite(box_nms_thresh, "box_nms_thresh", True)
        self.crop_nms_thresh = _finite(crop_nms_thresh, "crop_nms_thresh", True)
        self.crop_overlap_ratio = _finite(crop_overlap_ratio, "crop_overlap_ratio", True)
        self.crop_n_layers = crop_n_layers
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = _int_at_least(min_mask_region_area, 0, "min_mask_region_area")
        self.output_mode = output_mode
        self.use_m2m = bool(use_m2m)
        self.multimask_output = bool(multimask_output)
        self.predictor = SAM2ImagePredictor(model, store=store)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: str | os.PathLike | None = None,
        device: str | torch.device | None = "auto",
        image_size: int | None = None,
        progress: bool = True,
        precision: str = "auto",
        **options: Any,
    ) -> SAM2AutomaticMaskGenerator:
        """Load an official model (``"sam2.1_hiera_tiny"``, ``"facebook/sam2.1-hiera-tiny"``,
        downloaded once) or a checkpoint file, and wrap it.

        ``config``, ``device``, ``image_size``, ``progress`` and ``precision`` go to
        :func:`napari_sam2.models.checkpoints.load_model`, ``options`` to the constructor.
        """
        from ...models.checkpoints import load_model

        model = load_model(
            name_or_path, config=config, device=device, image_size=image_size, progress=progress,
            precision=precision,
        )
        return cls(model, **options)

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, image: Any) -> list[dict[str, Any]]:
        """Segment everything in one 2D image.

        Args:
            image: H×W×3 RGB or H×W grey, ``uint8`` or float in [0, 1]; anything else
                :func:`~napari_sam2.core.stacks.normalization.normalize_image` accepts is mapped
                with its defaults first.

        Returns:
            One record per mask, with ``segmentation`` (H×W bool array or RLE dict, by
            ``output_mode``), ``area`` (int pixels), ``bbox`` (XYWH floats, inclusive-end
            convention: width = last column - first column), ``predicted_iou``,
            ``point_coords`` (``[[x, y]]``, the prompting point in image pixels),
            ``stability_score`` and ``crop_box`` (XYWH of the crop that produced it).
        """
        image = _prepare_image(image)
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        records = []
        for i, rle in enumerate(data["rles"] if "rles" in data else []):
            if self.output_mode == "binary_mask":
                segmentation: Any = rle_to_mask(rle)
            elif self.output_mode == "coco_rle":
                segmentation = coco_encode_rle(rle)
            else:
                segmentation = rle
            records.append(
                {
                    "segmentation": segmentation,
                    "area": area_from_rle(rle),
                    "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                    "predicted_iou": data["iou_preds"][i].item(),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": data["stability_score"][i].item(),
                    "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
                }
            )
        return records

    def _generate_masks(self, image: np.ndarray) -> MaskBatch:
        """All crops' masks (as RLEs) with boxes, scores and points, as numpy columns."""
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layers = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        data = MaskBatch()
        for crop_box, layer in zip(crop_boxes, layers):
            data.cat(self._process_crop(image, crop_box, layer, orig_size))
        if len(crop_boxes) > 1 and len(data) > 0:
            crops = data["crop_boxes"]
            crop_area = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
            keep = batched_nms(
                data["boxes"].float(),
                (1 / crop_area).to(data["boxes"].device),  # smaller crops win
                torch.zeros(len(data), dtype=torch.int64, device=data["boxes"].device),
                iou_threshold=self.crop_nms_thresh,
            )
            data.filter(keep)
        data.to_numpy()
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer: int, orig_size: tuple[int, int]
    ) -> MaskBatch:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_size = (int(crop.shape[0]), int(crop.shape[1]))
        self.predictor.set_image(crop)
        scale = np.array([crop_size[1], crop_size[0]])[None, :]  # (w, h)
        points_in_crop = self.point_grids[layer] * scale
        data = MaskBatch()
        for (points,) in batch_iterator(self.points_per_batch, points_in_crop):
            data.cat(self._process_batch(points, crop_size, crop_box, orig_size))
        self.predictor.reset_predictor()

        keep = batched_nms(
            data["boxes"].float(),
            data["iou_preds"],
            torch.zeros(len(data), dtype=torch.int64, device=data["boxes"].device),
            iou_threshold=self.box_nms_thresh,
        )
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data), dtype=torch.int64).reshape(-1, 4)
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        crop_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> MaskBatch:
        orig_h, orig_w = orig_size
        device = self.predictor.device
        points_t = torch.as_tensor(points, dtype=torch.float32, device=device)
        coords = self.predictor._transforms.transform_coords(points_t, True, crop_size)
        labels = torch.ones(len(coords), dtype=torch.int, device=device)
        masks, iou_preds, low_res = self.predictor._predict(
            coords[:, None, :],
            labels[:, None],
            multimask_output=self.multimask_output,
            return_logits=True,
        )
        per_point = masks.shape[1]
        data = MaskBatch(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1).float(),
            points=points_t.repeat_interleave(per_point, dim=0),
            low_res_masks=low_res.flatten(0, 1),
        )
        del masks
        if self.use_m2m:
            coords = self.predictor._transforms.transform_coords(data["points"], True, crop_size)
            data["masks"], data["iou_preds"] = self._refine_with_m2m(coords, data["low_res_masks"])
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(
            data["masks"], self.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)

        binary = data["masks"] > self.mask_threshold
        del data["masks"], data["low_res_masks"]
        data["boxes"] = batched_mask_to_box(binary)
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if bool(near_edge.any()):
            data.filter(~near_edge)
            binary = binary[~near_edge]
        data["rles"] = mask_to_rle(uncrop_masks(binary, crop_box, orig_h, orig_w))
        return data

    def _refine_with_m2m(
        self, coords: torch.Tensor, low_res_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One more single-mask prediction per mask, prompted by its point and its own
        low-resolution logits; returns ``B×H×W`` logits and ``B`` predicted IoUs."""
        labels = torch.ones(len(coords), dtype=torch.int, device=coords.device)
        masks, ious = [], []
        for pts, lab, low in batch_iterator(self.points_per_batch, coords, labels, low_res_masks):
            m, iou, _ = self.predictor._predict(
                pts[:, None, :],
                lab[:, None],
                mask_input=low[:, None, :, :],
                multimask_output=False,
                return_logits=True,
            )
            masks.append(m[:, 0])
            ious.append(iou[:, 0].float())
        return torch.cat(masks), torch.cat(ious)

    @staticmethod
    def postprocess_small_regions(data: MaskBatch, min_area: int, nms_thresh: float) -> MaskBatch:
        """See :func:`napari_sam2.core.image.amg_utils.postprocess_small_regions`."""
        return postprocess_small_regions(data, min_area, nms_thresh)


# --------------------------------------------------------------------------------------------
def _prepare_image(image: Any) -> np.ndarray:
    """The image as the predictor takes it; other data mapped once by ``normalize_image``."""
    try:
        return check_image(np.asarray(image), "image")
    except ValueError:
        rgb, _ = normalize_image(np.asarray(image))
        return rgb


def _int_at_least(value: Any, minimum: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite(value: Any, name: str, unit_interval: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or (unit_interval and not 0.0 <= value <= 1.0):
        wanted = "in [0, 1]" if unit_interval else "finite"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return float(value)


def _check_grid(grid: Any, index: int) -> np.ndarray:
    array = np.asarray(grid, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise ValueError(f"point_grids[{index}] must be a non-empty N×2 array, got {array.shape}")
    if not np.all((array >= 0) & (array <= 1)):
        raise ValueError(f"point_grids[{index}] must hold (x, y) points in [0, 1]")
    return array
