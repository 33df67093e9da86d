"""Coordinate, prompt and mask transforms between an original image and SAM 2's input space.

* Coordinates: ``(x, y)`` pixels are divided by ``(W, H)`` and multiplied by the model input
  size ``S``; already normalised ``[0, 1]`` coordinates are only multiplied by ``S``.
* Masks: low-resolution logits are optionally cleaned (small background holes filled, small
  foreground specks removed) and bilinearly upsampled to the original image size.
* Images: :class:`ImageTransforms` builds the image predictor's input with
  :func:`napari_sam2.core.stacks.model_input.image_to_tensor` (that module describes SAM 2's
  two resizes, the image predictor's and the video predictor's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...models.postprocessing import get_connected_components
from ..stacks.model_input import check_image, image_to_tensor
from .prompts import Prompts

__all__ = ["ImageTransforms", "fill_holes_and_sprinkles"]

# Logit offsets from the threshold given to filled holes (+) and removed specks (-).
_FILL_OFFSET = 10.0


def fill_holes_and_sprinkles(
    masks: torch.Tensor,
    mask_threshold: float = 0.0,
    max_hole_area: float = 0.0,
    max_sprinkle_area: float = 0.0,
) -> torch.Tensor:
    """Clean ``B×C×h×w`` mask logits (8-connected components, computed on the CPU).

    Background regions (``logit <= mask_threshold``) of at most ``max_hole_area`` pixels get the
    logit ``mask_threshold + 10`` (foreground); foreground regions (``> mask_threshold``) of at
    most ``max_sprinkle_area`` pixels get ``mask_threshold - 10`` (background). Both sets of
    regions are found on the input logits. An area of 0 disables that step. Note that a small
    background region touching the border counts as a hole, as in SAM 2.
    """
    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return masks
    flat = masks.flatten(0, 1).unsqueeze(1)  # (B·C)×1×h×w
    out = masks
    if max_hole_area > 0:
        labels, areas = get_connected_components(flat <= mask_threshold)
        is_hole = ((labels > 0) & (areas <= max_hole_area)).reshape_as(masks)
        out = torch.where(is_hole, mask_threshold + _FILL_OFFSET, out)
    if max_sprinkle_area > 0:
        labels, areas = get_connected_components(flat > mask_threshold)
        is_speck = ((labels > 0) & (areas <= max_sprinkle_area)).reshape_as(masks)
        out = torch.where(is_speck, mask_threshold - _FILL_OFFSET, out)
    return out


class ImageTransforms:
    """The transforms of one model input size ``resolution`` (``S``), plus mask settings.

    Args:
        resolution: side ``S`` of the square model input (``model.image_size``).
        mask_threshold: logit above which a pixel is foreground.
        max_hole_area: fill background holes of at most this many low-resolution pixels.
        max_sprinkle_area: remove foreground specks of at most this many low-resolution pixels.
    """

    def __init__(
        self,
        resolution: int,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        self.resolution = int(resolution)
        self.mask_threshold = float(mask_threshold)
        self.max_hole_area = float(max_hole_area)
        self.max_sprinkle_area = float(max_sprinkle_area)

    def __call__(self, image: Any, device: torch.device | str | None = None) -> torch.Tensor:
        """``3×S×S`` model input of one image (validated with :func:`check_image`)."""
        return image_to_tensor(check_image(image), self.resolution, device)

    def forward_batch(
        self, images: Sequence[Any], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``B×3×S×S`` model input of a list of images (of any sizes)."""
        return torch.stack([self(image, device) for image in images], dim=0)

    def transform_coords(
        self,
        coords: torch.Tensor,
        normalize: bool = False,
        orig_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Map ``...×2`` (x, y) coordinates to model-input pixels.

        Args:
            coords: float tensor, last axis ``(x, y)``.
            normalize: ``coords`` are pixels of an ``orig_hw`` image and are normalised
                first; otherwise they are already in ``[0, 1]``.
            orig_hw: ``(H, W)`` of the original image, needed with ``normalize``.
        """
        if normalize:
            if orig_hw is None:
                raise ValueError("orig_hw (H, W) is needed to normalise pixel coordinates.")
            h, w = orig_hw
            scale = torch.tensor([w, h], dtype=coords.dtype, device=coords.device)
            coords = coords / scale
        return coords * self.resolution

    def transform_boxes(
        self,
        boxes: torch.Tensor,
        normalize: bool = False,
        orig_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Map ``B×4`` XYXY boxes to ``B×2×2`` corner points in model-input pixels."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), normalize, orig_hw)

    def transform_prompts(
        self, prompts: Prompts, orig_hw: tuple[int, int], device: torch.device | str | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Validated prompts as model-space tensors on ``device``.

        Returns:
            ``(point_coords B×N×2, point_labels B×N, boxes B×2×2, mask_input B×1×h×w)``,
            ``None`` where absent.
        """
        normalize = not prompts.normalized
        coords = labels = boxes = mask = None
        if prompts.point_coords is not None and prompts.point_labels is not None:
            coords = torch.from_numpy(prompts.point_coords).to(device)
            coords = self.transform_coords(coords, normalize, orig_hw)
            labels = torch.from_numpy(prompts.point_labels).to(device)
        if prompts.box is not None:
            boxes = torch.from_numpy(prompts.box).to(device)
            boxes = self.transform_boxes(boxes, normalize, orig_hw)
        if prompts.mask_input is not None:
            mask = torch.from_numpy(prompts.mask_input).to(device)
        return coords, labels, boxes, mask

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Clean ``B×C×h×w`` low-res logits and upsample them to ``B×C×H×W`` (``orig_hw``)."""
        masks = fill_holes_and_sprinkles(
            masks.float(), self.mask_threshold, self.max_hole_area, self.max_sprinkle_area
        )
        return F.interpolate(masks, size=tuple(orig_hw), mode="bilinear", align_corners=False)
