"""Memory encoder: fuses a frame's image embedding with its predicted mask into a memory.

The mask (at 16× the feature resolution) is reduced to the feature grid by a strided conv stack
(``MaskDownSampler``), added to a projection of the image features, refined by a few ConvNeXt
blocks (``Fuser`` of ``CXBlock``) and projected down to the memory width (64 channels in the
released checkpoints). The sine position encoding of the result is returned alongside it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from .common import LayerNorm2d, activation_module

__all__ = ["MaskDownSampler", "CXBlock", "Fuser", "MemoryEncoder"]


class MaskDownSampler(nn.Module):
    """Reduce a ``B×1×H×W`` mask to ``B×embed_dim×(H/total_stride)×(W/total_stride)``.

    Each of the ``log_stride(total_stride)`` stages is a strided conv that multiplies the channel
    count by ``stride**2`` (so no information is dropped by the reduction), followed by a channel
    layer norm and the activation. A final 1×1 conv maps to ``embed_dim`` channels.

    All layers live in the ``nn.Sequential`` ``self.encoder`` so that the checkpoint keys are
    ``encoder.{i}.weight`` with ``i`` counting conv, norm and activation modules alike.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] | str = nn.GELU,
    ) -> None:
        super().__init__()
        num_stages = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_stages != total_stride:
            raise ValueError(
                f"total_stride={total_stride} must be a power of stride={stride}."
            )
        act_cls = activation_module(activation)
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(num_stages):
            out_channels = channels * stride**2
            self.encoder.append(
                nn.Conv2d(channels, out_channels, kernel_size, stride=stride, padding=padding)
            )
            self.encoder.append(LayerNorm2d(out_channels))
            self.encoder.append(act_cls())
            channels = out_channels
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×1×H×W`` mask (probabilities or logits) to ``B×embed_dim×h×w`` features."""
        return self.encoder(x)


class CXBlock(nn.Module):
    """Residual ConvNeXt block on ``B×dim×H×W`` features.

    Depthwise ``kernel_size`` conv, channel layer norm, then a per-pixel MLP (``dim -> 4*dim ->
    dim``, GELU) applied channels-last with ``nn.Linear`` layers, scaled per channel by ``gamma``
    (layer scale) and added back to the input.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma: nn.Parameter | None
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None
        self.drop_path: nn.Module = (
            StochasticDepth(drop_path, "row") if drop_path > 0.0 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×dim×H×W`` to ``B×dim×H×W``."""
        y = self.norm(self.dwconv(x))
        y = y.permute(0, 2, 3, 1)  # B×C×H×W -> B×H×W×C
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = y * self.gamma
        y = y.permute(0, 3, 1, 2)  # B×H×W×C -> B×C×H×W
        return x + self.drop_path(y)


class Fuser(nn.Module):
    """An optional 1×1 input projection followed by ``num_layers`` copies of ``layer``.

    ``layer`` is a module instance (e.g. a ``CXBlock``); it is deep-copied ``num_layers`` times,
    so the copies have independent parameters (``layers.{i}.*`` in the checkpoint).
    """

    def __init__(
        self,
        layer: nn.Module,
        num_layers: int,
        dim: int | None = None,
        input_projection: bool = False,
    ) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Identity()
        if input_projection:
            if dim is None:
                raise ValueError("Fuser needs `dim` when input_projection=True.")
            self.proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` to ``B×C×H×W``."""
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode image features plus a mask into a memory feature map and its position encoding.

    Args:
        out_dim: channels of the memory (``out_proj`` is a 1×1 conv unless equal to ``in_dim``).
        mask_downsampler: maps ``B×1×(sH)×(sW)`` masks to ``B×in_dim×H×W``.
        fuser: refines the ``B×in_dim×H×W`` sum of image and mask features.
        position_encoding: called on the ``B×out_dim×H×W`` output, returns its encoding.
        in_dim: channels of the image features.
    """

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: nn.Module,
        fuser: nn.Module,
        position_encoding: nn.Module,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj: nn.Module = nn.Identity()
        if out_dim != in_dim:
            self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(
        self,
        pix_feat: torch.Tensor,
        masks: torch.Tensor,
        skip_mask_sigmoid: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Build the memory of one frame.

        Args:
            pix_feat: ``B×in_dim×H×W`` image features (moved to the masks' device if needed).
            masks: ``B×1×(16H)×(16W)`` mask logits, or probabilities with ``skip_mask_sigmoid``.
            skip_mask_sigmoid: do not apply a sigmoid to ``masks`` first.

        Returns:
            ``{"vision_features": B×out_dim×H×W, "vision_pos_enc": [B×out_dim×H×W]}``.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        mask_feat = self.mask_downsampler(masks)  # B×in_dim×H×W

        pix_feat = pix_feat.to(mask_feat.device)
        x = self.pix_feat_proj(pix_feat) + mask_feat
        x = self.out_proj(self.fuser(x))  # B×out_dim×H×W

        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}
