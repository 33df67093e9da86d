"""Image, coordinate and mask transforms between the original image and SAM 2's input space.

* Images: the model sees a square ``S×S`` RGB input normalised with the ImageNet mean and
  standard deviation, as SAM 2 was trained. SAM 2 resizes in two different ways, and so do we:

  - **one image** (:func:`image_to_tensor`, used by the image predictor, the automatic mask
    generator and image embeddings): ``uint8`` values are divided by 255 (floats must already
    be in ``[0, 1]``), then the float image is resized bilinearly with antialiasing, as SAM 2's
    image predictor does;
  - **frames of a stack** (:func:`video_frame_to_tensor`, used by the video predictor and so
    by tracking, the pre-encoder, the API's ``track``, the command line and the widget): a
    ``uint8`` frame is resized *as 8-bit values* with PIL's bicubic filter and only then
    divided by 255 -- exactly SAM 2's video frame loader, which produced its published video
    results; a float frame (16-bit, float or multichannel microscopy data after
    normalisation, which SAM 2 cannot read at all) is resized with the same bicubic kernel in
    float, without the 8-bit rounding, and clipped to ``[0, 1]``.

  The aspect ratio is *not* kept. Grey images are replicated to R, G and B. Other data
  (16-bit, multichannel, NaN...) is mapped first with
  :func:`napari_sam2.core.normalization.normalize_image`.
* Coordinates: ``(x, y)`` pixels are divided by ``(W, H)`` and multiplied by ``S``; already
  normalised ``[0, 1]`` coordinates are only multiplied by ``S``.
* Masks: low-resolution logits are optionally cleaned (small background holes filled, small
  foreground specks removed) and bilinearly upsampled to the original image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..models.postprocessing import get_connected_components
from .prompts import Prompts

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransforms",
    "check_image",
    "fill_holes_and_sprinkles",
    "image_to_tensor",
    "video_frame_to_tensor",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Logit offsets from the threshold given to filled holes (+) and removed specks (-).
_FILL_OFFSET = 10.0
_HINT = "map it first with napari_sam2.core.normalization.normalize_image"


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """Validate one 2D image and return it as a numpy array the model input is built from.

    Accepted: a numpy array ``H×W`` (grey), ``H×W×1`` (grey) or ``H×W×3`` (RGB) of dtype
    ``uint8`` (0..255) or float (finite, in ``[0, 1]``), or a PIL image in mode ``L`` or
    ``RGB``; ``H`` and ``W`` at least 2.

    Returns:
        The image as ``uint8`` or native ``float32``, ``H×W`` or ``H×W×3`` (``H×W×1``
        squeezed).

    Raises:
        TypeError: ``image`` is neither a numpy array nor a PIL image.
        ValueError: wrong number of dimensions or channels, size or dtype, naming ``name``.
    """
    if type(image).__module__.split(".")[0] == "PIL":
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array (H×W or H×W×3) or a PIL image, got "
            f"{type(image).__name__}."
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(
            f"{name} must be one 2D image, H×W (grey) or H×W×3 (RGB), got shape {image.shape}; "
            f"for stacks pass one frame at a time, for other channel layouts {_HINT}."
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{name} must be at least 2×2 pixels, got shape {image.shape}.")
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind != "f":
        raise ValueError(
            f"{name} must be uint8 (0..255) or float in [0, 1], got dtype {image.dtype}; {_HINT}."
        )
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values; {_HINT}.")
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"a float {name} must have values in [0, 1], got [{low:g}, {high:g}]; {_HINT}."
        )
    return image


def image_to_tensor(
    image: np.ndarray, resolution: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Model input of a validated image (see :func:`check_image`): ``3×S×S`` float32.

    The pixels are moved to ``device`` before resizing, so large images are resized there.
    """
    pixels = np.require(image, requirements=("C_CONTIGUOUS", "WRITEABLE"))
    x = torch.from_numpy(pixels).to(device)
    x = x[..., None] if x.ndim == 2 else x
    x = x.permute(2, 0, 1)  # H×W×C -> C×H×W
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    x = F.interpolate(
        x[None], size=(resolution, resolution), mode="bilinear", align_corners=False,
        antialias=True,
    )[0]
    x = x.expand(3, -1, -1)  # grey -> RGB (no-op for RGB)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def video_frame_to_tensor(
    image: np.ndarray, resolution: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Model input of a validated stack frame (see :func:`check_image`): ``3×S×S`` float32.

    Resized as SAM 2's video frame loader resizes (bicubic, PIL's kernel with antialiasing;
    aspect ratio not kept):

    * ``uint8`` frames are resized as 8-bit images by PIL itself (rounded and clipped to
      0..255 between the horizontal and vertical passes, as PIL does), then divided by 255:
      the reference's numbers for JPEG/PNG folders and ``uint8`` arrays;
    * float frames (``[0, 1]``, e.g. normalised 16-bit data) are resized with the same bicubic
      kernel in float32 on ``device`` (torch's antialiased bicubic is PIL's kernel), without
      8-bit rounding, and clipped to ``[0, 1]`` (bicubic overshoots at sharp edges).

    A frame already ``S×S`` is not resampled.
    """
    size = (int(resolution), int(resolution))
    if image.dtype == np.uint8:
        if image.shape[:2] != size:
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
        x = torch.from_numpy(np.require(image, requirements=("C_CONTIGUOUS", "WRITEABLE")))
        x = x.to(device)
        x = (x[..., None] if x.ndim == 2 else x).permute(2, 0, 1).float().div(255)  # C×S×S
    else:
        pixels = np.require(image, np.float32, requirements=("C_CONTIGUOUS", "WRITEABLE"))
        x = torch.from_numpy(pixels).to(device)
        x = (x[..., None] if x.ndim == 2 else x).permute(2, 0, 1)  # H×W×C -> C×H×W
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False,
                              antialias=True)[0].clamp_(0.0, 1.0)
    x = x.expand(3, -1, -1)  # grey -> RGB (no-op for RGB)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


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
