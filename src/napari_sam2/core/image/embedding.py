"""Image embeddings: the backbone features SAM 2's heads decode prompts against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..stacks.model_input import image_to_tensor

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base

__all__ = ["ImageEmbedding", "embed_images"]


@dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """Backbone features of one image or a batch of images.

    Attributes:
        image_embed: ``B×C×h×w`` lowest-resolution features (``no_mem_embed`` added if the
            model says so), ``h = w = image_size / 16``.
        high_res_feats: ``(B×C/8×4h×4w, B×C/4×2h×2w)`` for models with high-resolution
            features, else empty.
        orig_hw: ``(H, W)`` of each original image.
        is_batch: made for batch prediction (``set_image_batch``).
    """

    image_embed: torch.Tensor
    high_res_feats: tuple[torch.Tensor, ...]
    orig_hw: tuple[tuple[int, int], ...]
    is_batch: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The features as SAM 2 stores them: ``{"image_embed", "high_res_feats"}``."""
        return {"image_embed": self.image_embed, "high_res_feats": list(self.high_res_feats)}


@torch.no_grad()
def embed_images(
    model: SAM2Base, images: Sequence[np.ndarray], is_batch: bool = False
) -> ImageEmbedding:
    """Run the image encoder on images validated by
    :func:`napari_sam2.core.stacks.model_input.check_image`, all in one batch on
    ``model.device``."""
    size, device = model.image_size, model.device
    dtype = next(model.parameters()).dtype
    batch = torch.stack([image_to_tensor(im, size, device) for im in images]).to(dtype)
    backbone_out = model.forward_image(batch)
    _, feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        feats[-1] = feats[-1] + model.no_mem_embed
    n = len(images)
    # HW×B×C tokens -> B×C×H×W maps
    maps = [f.permute(1, 2, 0).reshape(n, -1, *hw) for f, hw in zip(feats, feat_sizes)]
    return ImageEmbedding(
        image_embed=maps[-1],
        high_res_feats=tuple(maps[:-1]),
        orig_hw=tuple((int(im.shape[0]), int(im.shape[1])) for im in images),
        is_batch=is_batch,
    )
