"""Image embeddings: the backbone features SAM 2's heads decode prompts against.

:func:`embed_images` runs the image encoder on the images whose features are not in their
embedding store (when they have one), writes what it computed there, and assembles the
embedding from stored and computed features alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..stacks.model_input import image_to_tensor

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base
    from ..store.stack_store import FeatureStore

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
    model: SAM2Base, images: Sequence[np.ndarray], is_batch: bool = False,
    stores: Sequence[tuple[FeatureStore, str] | None] | None = None,
) -> ImageEmbedding:
    """Embed images validated by :func:`napari_sam2.core.stacks.model_input.check_image` on
    ``model.device``.

    ``stores`` gives, per image, its :class:`~napari_sam2.core.store.stack_store.FeatureStore`
    and signature (or ``None``): features found there are used as they are; the other images
    are encoded together in one batch and their features written to their stores.
    """
    n = len(images)
    stores = list(stores) if stores is not None else [None] * n
    if len(stores) != n:
        raise ValueError(f"got {len(stores)} stores for {n} images")
    device = model.device
    levels: list[list[torch.Tensor] | None] = [None] * n
    for i, entry in enumerate(stores):
        if entry is not None:
            loaded = entry[0].load(0, entry[1], device)
            levels[i] = None if loaded is None else loaded[0]
    missing = [i for i in range(n) if levels[i] is None]
    if missing:
        size = model.image_size
        dtype = next(model.parameters()).dtype
        batch = torch.stack([image_to_tensor(images[i], size, device) for i in missing])
        out = model.forward_image(batch.to(dtype))
        fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
        for j, i in enumerate(missing):
            levels[i] = [f[j : j + 1] for f in fpn]
            if stores[i] is not None:
                stores[i][0].save(0, stores[i][1], levels[i], [p[j : j + 1] for p in pos])
    fpn = [torch.cat([lv[k] for lv in levels], dim=0) for k in range(len(levels[0]))]
    maps = fpn[-model.num_feature_levels :]  # B×C×H×W, highest resolution first
    image_embed = maps[-1]
    if model.directly_add_no_mem_embed:
        image_embed = image_embed + model.no_mem_embed.reshape(1, -1, 1, 1)
    return ImageEmbedding(
        image_embed=image_embed,
        high_res_feats=tuple(maps[:-1]),
        orig_hw=tuple((int(im.shape[0]), int(im.shape[1])) for im in images),
        is_batch=is_batch,
    )
