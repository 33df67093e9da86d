"""Position encodings: 2D sine (image features, memories), random Fourier (prompts),
1D sine (temporal positions of object pointers) and axial rotary encodings (memory attention).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import version_key

__all__ = [
    "PositionEmbeddingSine",
    "PositionEmbeddingRandom",
    "sine_encoding_1d",
    "axial_rope_tables",
    "apply_rope",
]


def _inverse_frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    """``temperature ** (2 * (i // 2) / num_feats)`` for ``i < num_feats`` (pairs share a
    frequency)."""
    idx = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """Even channels take ``sin``, odd channels ``cos``, interleaved in the last dim."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Fixed 2D sine/cosine encoding of a feature map's grid (DETR style).

    ``forward(x)`` with ``x`` of shape ``B×C×H×W`` returns ``B×num_pos_feats×H×W``: the first half
    of the channels encodes the row (y), the second half the column (x). Encodings are computed once
    per grid size and kept in a small cache.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float | None = None,
        warmup_cache: bool = True,
        image_size: int = 1024,
        strides: tuple[int, ...] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}.")
        if scale is not None and not normalize:
            raise ValueError("scale can only be given together with normalize=True.")
        self.num_pos_feats = num_pos_feats // 2  # features per axis
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        # warmup_cache / image_size / strides are accepted for config compatibility only.
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def grid(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Encoding of an ``height×width`` grid, shape ``num_pos_feats*2×H×W`` (cached)."""
        key = (height, width, str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        ys = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        if self.normalize:
            eps = 1e-6
            ys = ys / (ys[-1] + eps) * self.scale
            xs = xs / (xs[-1] + eps) * self.scale
        inv = _inverse_frequencies(self.num_pos_feats, self.temperature, device)
        pos_y = _interleave_sin_cos(ys[:, None] / inv)  # H×F
        pos_x = _interleave_sin_cos(xs[:, None] / inv)  # W×F
        f = self.num_pos_feats
        pos = torch.cat(
            (
                pos_y[:, None, :].expand(height, width, f),
                pos_x[None, :, :].expand(height, width, f),
            ),
            dim=-1,
        ).permute(2, 0, 1)  # 2F×H×W
        pos = pos.contiguous()
        self._cache[key] = pos
        return pos

    def grid_as(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """:meth:`grid` with its values rounded to ``dtype`` (kept in float32 for float32 and
        bfloat16; cached per dtype, so no call pays for the cast)."""
        if dtype in (torch.float32, torch.float64):
            return self.grid(height, width, device).to(dtype)
        key = (height, width, f"{device}:{dtype}")
        cached = self._cache.get(key)
        if cached is None:
            cached = self.grid(height, width, device).to(dtype).float()
            self._cache[key] = cached
        return cached

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.grid(x.shape[-2], x.shape[-1], x.device)
        return pos[None].expand(x.shape[0], -1, -1, -1).to(x.dtype)

    @torch.no_grad()
    def rounded_like(self, x: torch.Tensor) -> torch.Tensor:
        """``B×2F×H×W`` encoding for ``x`` (a broadcast view), with the values of
        ``forward(x)`` but in float32: what a bfloat16 feature map's encoding holds, without
        a bfloat16 copy to cast back later."""
        pos = self.grid_as(x.shape[-2], x.shape[-1], x.device, x.dtype)
        return pos[None].expand(x.shape[0], -1, -1, -1)


class PositionEmbeddingRandom(nn.Module):
    """Encoding with random spatial frequencies (SAM's prompt encoder).

    The ``2×num_pos_feats`` Gaussian matrix is a buffer, so it is stored in checkpoints.
    Output has ``2*num_pos_feats`` channels (sin then cos).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``...×2`` coordinates in ``[0, 1]`` (x, y) to ``...×C`` features."""
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat((proj.sin(), proj.cos()), dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an ``H×W`` grid at pixel centres, shape ``C×H×W``.

        Without gradients the result is cached per size (until the matrix changes); treat it
        as read-only.
        """
        matrix = self.positional_encoding_gaussian_matrix
        versions = version_key(matrix)
        if torch.is_grad_enabled() or versions is None:
            return self._dense(size)
        key = (tuple(int(v) for v in size), matrix.device, versions)
        cached = getattr(self, "_dense_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self._dense(size))
            self._dense_cache = cached
        return cached[1]

    def _dense(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        grid = torch.stack(
            (xs[None, :].expand(h, w), ys[:, None].expand(h, w)), dim=-1
        )  # H×W×2, (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode ``B×N×2`` (x, y) pixel coordinates of an image of size ``(H, W)``: ``B×N×C``."""
        h, w = image_size
        size = torch.tensor([w, h], dtype=coords_input.dtype, device=coords_input.device)
        return self._encode((coords_input / size).to(torch.float32))


def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    """1D sine encoding of ``positions`` (any shape ``S``) to ``S×dim``: sines, then cosines."""
    half = dim // 2
    inv = _inverse_frequencies(half, temperature, positions.device)
    angles = positions.unsqueeze(-1) / inv
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def axial_rope_tables(
    head_dim: int, width: int, height: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of 2D axial rotary encoding for a row-major ``height×width`` grid.

    Returns ``(cos, sin)``, each ``(height*width)×(head_dim/2)``: one angle per channel pair, the
    first ``head_dim/4`` pairs rotating with the column index, the rest with the row index.
    """
    if head_dim % 4:
        raise ValueError(f"Rotary encoding needs a head dimension divisible by 4, got {head_dim}.")
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    idx = torch.arange(width * height, dtype=torch.float32)
    col = idx % width
    row = torch.div(idx, width, rounding_mode="floor")
    angles = torch.cat((torch.outer(col, freqs), torch.outer(row, freqs)), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (``B×heads×N×head_dim``) by the tables (``N'×head_dim/2``).

    When the sequence ``N`` is a multiple ``r`` of the table length ``N'`` the table is tiled
    ``r`` times (keys that stack several memory frames). Computation is in float32; the result
    keeps ``x``'s dtype.
    """
    n = x.shape[-2]
    if n != cos.shape[0]:
        reps = n // cos.shape[0]
        cos = cos.repeat(reps, 1)
        sin = sin.repeat(reps, 1)
    xf = x.float().unflatten(-1, (-1, 2))  # B×heads×N×(head_dim/2)×2
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)
