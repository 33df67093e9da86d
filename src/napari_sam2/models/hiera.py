"""Hiera: the hierarchical vision transformer used as SAM 2's image trunk.

The constructor keywords and the state-dict layout (``pos_embed``, ``pos_embed_window``,
``patch_embed.proj.*``, ``blocks.N.*``) match the SAM 2 checkpoints and configs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import version_key
from .hiera_blocks import (
    MultiScaleAttention,
    MultiScaleBlock,
    PatchEmbed,
    do_pool,
    window_partition,
    window_unpartition,
)

__all__ = [
    "Hiera",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "PatchEmbed",
    "do_pool",
    "window_partition",
    "window_unpartition",
]

logger = logging.getLogger(__name__)

_PosKey = tuple  # ((H, W), device, dtype, version_key of the parameters)


class Hiera(nn.Module):
    """Hierarchical ViT with windowed attention and query pooling between stages.

    ``forward`` maps a ``B×3×H×W`` image to a list of ``B×C_i×H_i×W_i`` feature maps, one per
    stage from the highest to the lowest resolution (strides 4, 8, 16, 32 by default), or only
    the last stage if ``return_interm_layers`` is false. ``channel_list`` lists the channel counts
    of those outputs from the lowest resolution to the highest, i.e. the order the FPN neck's
    ``backbone_channel_list`` uses.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] | None = (12, 16, 20),
        weights_path: str | os.PathLike | None = None,
        return_interm_layers: bool = True,
    ) -> None:
        """
        Args:
            embed_dim: channels of the first stage; multiplied by ``dim_mul`` at each stage change.
            num_heads: attention heads of the first stage; multiplied by ``head_mul`` likewise.
            drop_path_rate: stochastic depth rate, ramped linearly from 0 over the blocks.
            q_pool: number of stage transitions that halve the resolution by query pooling.
            q_stride: pooling stride at those transitions.
            stages: number of blocks per stage.
            window_pos_embed_bkg_spatial_size: grid size of the interpolated background
                position embedding (``pos_embed``).
            window_spec: attention window side per stage (0 would mean global attention).
            global_att_blocks: indices of blocks that use global instead of windowed attention.
            weights_path: optional trunk-only checkpoint to load (non-strict).
            return_interm_layers: return every stage's output instead of only the last one.
        """
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("stages and window_spec must have the same length.")
        self.window_spec = list(window_spec)
        self.q_stride = tuple(q_stride)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool <= len(self.stage_ends) - 1:
            raise ValueError(f"q_pool must be in [0, {len(self.stage_ends) - 1}], got {q_pool}.")
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers
        self.global_att_blocks = global_att_blocks
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        # Windowed absolute position embedding (arXiv:2311.05613): a coarse background
        # embedding interpolated to the token grid plus a per-window embedding tiled over it.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size)
        )
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0])
        )
        self._pos_cache: dict[_PosKey, torch.Tensor] = {}

        depth = sum(stages)
        drop_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        global_blocks = set(global_att_blocks or ())
        stage = 0
        dim = embed_dim
        self.blocks = nn.ModuleList()
        for i in range(depth):
            # The window size lags by one block: the first block of a stage still uses the
            # previous stage's window (and pools its queries down to the new resolution).
            window_size = 0 if i in global_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    drop_path=drop_rates[i],
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            dim = dim_out

        ends = self.stage_ends[::-1] if return_interm_layers else self.stage_ends[-1:]
        self.channel_list = [self.blocks[i].dim_out for i in ends]

        if weights_path is not None:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            result = self.load_state_dict(state, strict=False)
            logger.info("Loaded Hiera weights from %s: %s", weights_path, result)

    # ------------------------------------------------------------------ position embedding
    def _pos_key(self, hw: tuple[int, int]) -> _PosKey | None:
        """Cache key: the grid size plus everything that identifies the current parameter
        values; ``None`` (do not cache) for parameters made under inference mode."""
        versions = version_key(self.pos_embed, self.pos_embed_window)
        if versions is None:
            return None
        return (hw, self.pos_embed.device, self.pos_embed.dtype, versions)

    def _compute_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Position embedding for an ``H×W`` token grid, shape ``1×H×W×C``."""
        h, w = hw
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")  # 1×C×H×W
        win = self.pos_embed_window  # 1×C×ws×ws
        reps_h = -(-h // win.shape[-2])
        reps_w = -(-w // win.shape[-1])
        tiled = win.tile(1, 1, reps_h, reps_w)[..., :h, :w]  # 1×C×H×W
        return (pos + tiled).permute(0, 2, 3, 1).contiguous()  # 1×H×W×C

    def get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Cached ``1×H×W×C`` position embedding for an ``H×W`` token grid.

        The embedding is computed once per grid size and parameter state; it is recomputed
        (not cached) when gradients must flow into the position parameters.
        """
        hw = (int(hw[0]), int(hw[1]))
        needs_grad = torch.is_grad_enabled() and (
            self.pos_embed.requires_grad or self.pos_embed_window.requires_grad
        )
        if needs_grad:
            return self._compute_pos_embed(hw)
        key = self._pos_key(hw)
        if key is None:
            return self._compute_pos_embed(hw)
        cached = self._pos_cache.get(key)
        if cached is None:
            # Drop entries for stale parameter states (or other devices/dtypes).
            self._pos_cache = {k: v for k, v in self._pos_cache.items() if k[1:] == key[1:]}
            cached = self._compute_pos_embed(hw)
            self._pos_cache[key] = cached
        return cached

    def clear_pos_cache(self) -> None:
        """Forget every cached position embedding."""
        self._pos_cache = {}

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Moving/casting the module invalidates the cached embeddings.
        self.clear_pos_cache()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``B×3×H×W`` image -> ``B×C_i×H_i×W_i`` stage outputs, highest resolution first."""
        x = self.patch_embed(x)  # B×H/4×W/4×C
        x = x + self.get_pos_embed(x.shape[1:3])

        last = self.stage_ends[-1]
        wanted = set(self.stage_ends) if self.return_interm_layers else {last}
        outputs: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                outputs.append(x.permute(0, 3, 1, 2))  # B×C×H×W view of the channels-last grid
        return outputs

    def get_num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)
