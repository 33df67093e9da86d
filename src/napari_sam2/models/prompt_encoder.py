"""Prompt encoder of the SAM heads: turns clicks, boxes and mask prompts into embeddings.

Sparse prompts (points and box corners) become one ``embed_dim`` token each: a random
Fourier encoding of the position plus a learned embedding for the kind of prompt. A mask prompt
becomes a dense ``embed_dim×H×W`` map aligned with the image embedding; without one, a learned
"no mask" vector is broadcast over the grid instead.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d, activation_module
from .position_encoding import PositionEmbeddingRandom

__all__ = ["PromptEncoder"]

# Point labels understood by ``_embed_points``.
LABEL_PADDING = -1  # not a point: replaced by ``not_a_point_embed``
LABEL_NEGATIVE = 0  # background click
LABEL_POSITIVE = 1  # foreground click
LABEL_BOX_TOP_LEFT = 2  # first box corner
LABEL_BOX_BOTTOM_RIGHT = 3  # second box corner


class PromptEncoder(nn.Module):
    """Encode point, box and mask prompts for :class:`~.mask_decoder.MaskDecoder`.

    Args:
        embed_dim: channels of the prompt embeddings (the decoder's transformer width).
        image_embedding_size: ``(H, W)`` of the image embedding grid (e.g. 64×64 for 1024 px).
        input_image_size: ``(H, W)`` of the (padded) network input image, in pixels.
        mask_in_chans: hidden channels of the mask-downscaling convolutions.
        activation: activation class (or name) used between the mask convolutions.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] | str = nn.GELU,
    ) -> None:
        super().__init__()
        act = activation_module(activation)
        self.embed_dim = embed_dim
        self.input_image_size = (int(input_image_size[0]), int(input_image_size[1]))
        self.image_embedding_size = (int(image_embedding_size[0]), int(image_embedding_size[1]))
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # One learned vector per point kind: negative, positive, box corner 1, box corner 2.
        self.num_point_embeddings: int = 4
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        # Mask prompts are given at 4× the embedding resolution and reduced by two stride-2 convs.
        self.mask_input_size = (
            4 * self.image_embedding_size[0],
            4 * self.image_embedding_size[1],
        )
        quarter = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, quarter, kernel_size=2, stride=2),
            LayerNorm2d(quarter),
            act(),
            nn.Conv2d(quarter, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            act(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of every cell of the image embedding grid, ``1×C×H×W``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _point_kind_table(self) -> torch.Tensor:
        """The four learned point-kind vectors stacked, ``4×C`` (index = label)."""
        return torch.cat([emb.weight for emb in self.point_embeddings], dim=0)

    def _embed_points(
        self,
        points: torch.Tensor,
        labels: torch.Tensor,
        pad: bool,
    ) -> torch.Tensor:
        """Embed ``B×N×2`` points, (x, y) in input-image pixels, with ``B×N`` labels.

        Labels: -1 padding, 0 negative, 1 positive, 2/3 box corners. Padding tokens are
        replaced by ``not_a_point_embed``; labels 0–3 add their learned vector to the
        positional encoding; any other label keeps the bare positional encoding. With ``pad``
        one padding token is appended (used when no box follows the points).

        Returns ``B×N×C`` (``B×(N+1)×C`` with ``pad``).
        """
        points = points + 0.5  # pixel index -> pixel centre
        if pad:
            pad_point = torch.zeros(
                (points.shape[0], 1, 2), dtype=points.dtype, device=points.device
            )
            pad_label = torch.full(
                (labels.shape[0], 1), LABEL_PADDING, dtype=labels.dtype, device=labels.device
            )
            points = torch.cat([points, pad_point], dim=1)  # B×(N+1)×2
            labels = torch.cat([labels, pad_label], dim=1)  # B×(N+1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)  # B×N×C

        table = self._point_kind_table()  # 4×C
        is_kind = (labels >= 0) & (labels < self.num_point_embeddings)  # B×N
        kind = labels.long().clamp(0, self.num_point_embeddings - 1)  # B×N
        embedding = torch.where(is_kind.unsqueeze(-1), embedding + table[kind], embedding)
        embedding = torch.where(
            (labels == LABEL_PADDING).unsqueeze(-1),
            self.not_a_point_embed.weight.to(embedding.dtype).expand_as(embedding),
            embedding,
        )
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Embed boxes, ``B×4`` (x0, y0, x1, y1) in input-image pixels, as two corner tokens.

        Returns ``B×2×C``.
        """
        corners = (boxes + 0.5).reshape(-1, 2, 2)  # B×2×2: (top-left, bottom-right) × (x, y)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)  # B×2×C
        table = self._point_kind_table()
        corner_kinds = table[LABEL_BOX_TOP_LEFT : LABEL_BOX_BOTTOM_RIGHT + 1]  # 2×C
        return embedding + corner_kinds.unsqueeze(0)

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Embed ``B×1×4H×4W`` mask logits into a dense ``B×C×H×W`` map."""
        return self.mask_downscaling(masks)

    def _get_batch_size(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        """Batch size implied by the first prompt given (1 when there is none)."""
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts.

        Args:
            points: ``(coords, labels)`` with ``B×N×2`` (x, y) pixel coordinates and ``B×N``
                labels, or ``None``.
            boxes: ``B×4`` boxes (x0, y0, x1, y1) in pixels, or ``None``.
            masks: ``B×1×4H×4W`` mask logits, or ``None``.

        Returns:
            ``(sparse, dense)``: sparse tokens ``B×N'×C`` (points, one padding token when there
            are points but no box, then two box corners) and dense embeddings ``B×C×H×W``.
        """
        bs = self._get_batch_size(points, boxes, masks)
        parts: list[torch.Tensor] = []
        if points is not None:
            coords, labels = points
            parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if parts:
            sparse = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # B×N'×C
        else:
            sparse = torch.empty((bs, 0, self.embed_dim), device=self._get_device())

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
