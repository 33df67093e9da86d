"""Mask post-processing without compiled extensions.

The reference computes connected components with a CUDA extension (and silently skips the
post-processing when it is missing); here ``scipy.ndimage`` does it on the CPU, for tensors on
any device.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["get_connected_components", "fill_holes_in_mask_scores"]

# Score given to filled holes: just above the 0 threshold, i.e. weak foreground.
_HOLE_FILL_SCORE = 0.1
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def get_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 8-connected components of binary masks.

    Args:
        mask: ``N×1×H×W`` binary (bool or 0/1) masks.

    Returns:
        ``(labels, areas)``, both ``N×1×H×W`` int32 on ``mask``'s device: the component label
        (1, 2, ... per mask; 0 on background) and the area in pixels of the component each
        foreground pixel belongs to (0 on background).
    """
    if mask.dim() != 4 or mask.size(1) != 1:
        raise ValueError(f"mask must be N×1×H×W, got {tuple(mask.shape)}.")
    binary = mask.detach().to("cpu", torch.bool).numpy()
    labels = np.zeros(binary.shape, dtype=np.int32)
    areas = np.zeros(binary.shape, dtype=np.int32)
    for i in range(binary.shape[0]):
        lab, _ = ndimage.label(binary[i, 0], structure=_EIGHT_CONNECTED)
        counts = np.bincount(lab.ravel())  # counts[0] is the background
        counts[0] = 0
        labels[i, 0] = lab
        areas[i, 0] = counts[lab]
    return (
        torch.from_numpy(labels).to(mask.device),
        torch.from_numpy(areas).to(mask.device),
    )


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """Turn small background regions of mask logits into weak foreground.

    Every 8-connected region of ``mask <= 0`` with at most ``max_area`` pixels gets the score 0.1
    (as in the reference, this includes small background regions touching the border).

    Args:
        mask: ``N×1×H×W`` mask logits.
        max_area: largest region (in pixels) to fill; must be positive.

    Returns:
        ``N×1×H×W`` logits of ``mask``'s dtype.
    """
    if max_area <= 0:
        raise ValueError(f"max_area must be positive, got {max_area}.")
    labels, areas = get_connected_components(mask <= 0)
    is_hole = (labels > 0) & (areas <= max_area)
    return torch.where(is_hole, _HOLE_FILL_SCORE, mask)
