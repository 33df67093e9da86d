"""SAM 2 image encoder: a hierarchical trunk (Hiera) followed by a light FPN neck."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageEncoder", "FpnNeck"]


class ImageEncoder(nn.Module):
    """Runs ``trunk`` then ``neck`` and packs the multi-scale features.

    ``forward(sample)`` with a ``B×3×H×W`` image returns a dict with

    * ``backbone_fpn``: list of ``B×d_model×H_i×W_i`` maps, highest resolution first,
    * ``vision_pos_enc``: matching list of ``B×d_model×H_i×W_i`` position encodings,
    * ``vision_features``: the last (lowest resolution) entry of ``backbone_fpn``.

    ``scalp`` drops that many of the lowest-resolution levels from both lists.
    """

    def __init__(self, trunk: nn.Module, neck: nn.Module, scalp: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        trunk_channels = list(trunk.channel_list)
        neck_channels = list(neck.backbone_channel_list)
        if trunk_channels != neck_channels:
            raise ValueError(
                f"Channel dims of trunk and neck do not match. "
                f"Trunk: {trunk_channels}, neck: {neck_channels}"
            )

    def forward(self, sample: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``B×3×H×W`` image -> ``{"vision_features", "vision_pos_enc", "backbone_fpn"}``."""
        features, pos = self.neck(self.trunk(sample))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {
            "vision_features": features[-1],
            "vision_pos_enc": pos,
            "backbone_fpn": features,
        }

    def positions(
        self, sizes: Sequence[tuple[int, int]], dtypes: Sequence[torch.dtype],
        device: torch.device, batch: int = 1,
    ) -> list[torch.Tensor]:
        """The ``vision_pos_enc`` that :meth:`forward` returns for feature maps of these
        ``(H_i, W_i)`` sizes whose neck outputs had these dtypes (``batch×d_model×H_i×W_i``
        each, broadcast views): features read back from a store need no encoder run."""
        return self.neck.positions(sizes, dtypes, device, batch)


def _encode_positions(encoding: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Position encoding of ``x``'s grid with ``x``'s rounding (float32 when it can be)."""
    rounded = getattr(encoding, "rounded_like", None)
    return encoding(x).to(x.dtype) if rounded is None else rounded(x)


class FpnNeck(nn.Module):
    """Feature-pyramid neck without output convolutions.

    Each backbone level is projected to ``d_model`` channels by a lateral convolution
    (``convs.N.conv``; ``convs.0`` handles the lowest resolution, whose channel count is
    ``backbone_channel_list[0]``).
    Levels listed in ``fpn_top_down_levels`` additionally receive the 2× upsampled output of the
    next coarser level (summed, or averaged with ``fuse_type="avg"``).
    """

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: Sequence[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}.")
        self.position_encoding = position_encoding
        self.backbone_channel_list = list(backbone_channel_list)
        self.d_model = d_model
        self.convs = nn.ModuleList()
        for channels in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module(
                "conv",
                nn.Conv2d(
                    channels, d_model, kernel_size=kernel_size, stride=stride, padding=padding
                ),
            )
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        if fpn_top_down_levels is None:
            fpn_top_down_levels = range(len(self.convs))
        self.fpn_top_down_levels = list(fpn_top_down_levels)

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        """2× upsampling of a ``B×C×H×W`` map (computed in fp32)."""
        nearest = self.fpn_interp_model == "nearest"
        return F.interpolate(
            x.float(),
            scale_factor=2.0,
            mode=self.fpn_interp_model,
            align_corners=None if nearest else False,
            antialias=False,
        )

    def forward(
        self, xs: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Backbone maps (highest resolution first, ``B×C_i×H_i×W_i``) -> ``(features, pos)``.

        Both outputs are lists in the same order as ``xs`` with ``d_model`` channels each.
        """
        n_levels = len(self.convs)
        if len(xs) != n_levels:
            raise ValueError(f"Expected {n_levels} feature maps, got {len(xs)}.")
        out: list[torch.Tensor] = [None] * n_levels  # type: ignore[list-item]
        pos: list[torch.Tensor] = [None] * n_levels  # type: ignore[list-item]
        prev: torch.Tensor | None = None
        top = n_levels - 1
        for i in range(top, -1, -1):  # coarse to fine
            lateral = self.convs[top - i](xs[i])
            if prev is not None and i in self.fpn_top_down_levels:
                prev = lateral + self._upsample(prev)
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = _encode_positions(self.position_encoding, prev)
        return out, pos

    def positions(
        self, sizes: Sequence[tuple[int, int]], dtypes: Sequence[torch.dtype],
        device: torch.device, batch: int = 1,
    ) -> list[torch.Tensor]:
        """Position encodings of ``batch×d_model×H×W`` maps of the given sizes and dtypes, as
        :meth:`forward` computes them (the encoding reads only a map's shape, dtype and
        device, so no map is allocated)."""
        out = []
        for (h, w), dtype in zip(sizes, dtypes):
            like = torch.empty((), dtype=dtype, device=device).expand(batch, self.d_model, h, w)
            out.append(_encode_positions(self.position_encoding, like))
        return out
