"""What the model sees: one 2D image or one stack frame as SAM 2's ``3×S×S`` input tensor.

The model takes a square ``S×S`` RGB input normalised with the ImageNet mean and standard
deviation, as SAM 2 was trained. Its input is built from a validated image
(:func:`check_image`: ``uint8`` 0..255, or float in ``[0, 1]``; other data -- 16-bit,
multichannel, NaN... -- is mapped first with
:func:`napari_sam2.core.stacks.normalization.normalize_image`). Grey images are replicated to
R, G and B, and the aspect ratio is *not* kept.

SAM 2 resizes in two different ways, and so do we -- this is the one place both live:

* **one image** (:func:`image_to_tensor`, used by the image predictor, the automatic mask
  generator and image embeddings): ``uint8`` values are divided by 255, then the float image
  is resized bilinearly with antialiasing, as SAM 2's image predictor does;
* **frames of a stack** (:func:`video_frame_to_tensor`, used by the video predictor and so by
  tracking, the pre-encoder, the API's ``track``, the command line and the widget): a
  ``uint8`` frame is resized *as 8-bit values* with PIL's bicubic filter and only then divided
  by 255 -- exactly SAM 2's video frame loader, which produced its published video results; a
  float frame (16-bit, float or multichannel microscopy data after normalisation, which SAM 2
  cannot read at all) is resized with the same bicubic kernel in float, without the 8-bit
  rounding, and clipped to ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_image",
    "image_to_tensor",
    "video_frame_to_tensor",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_HINT = "map it first with napari_sam2.core.stacks.normalization.normalize_image"


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
