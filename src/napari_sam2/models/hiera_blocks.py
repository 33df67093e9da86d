"""Building blocks of the Hiera trunk: patch embedding, windowing and multi-scale blocks.

All blocks work on channels-last token grids ``B×H×W×C``. Parameter names follow the SAM 2
checkpoint layout (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.layers.N``, ``proj``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from .attention_kernels import sdpa
from .common import MLP

__all__ = [
    "PatchEmbed",
    "window_partition",
    "window_unpartition",
    "do_pool",
    "MultiScaleAttention",
    "MultiScaleBlock",
]


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a ``B×H×W×C`` grid into non-overlapping square windows.

    The grid is zero-padded at the bottom/right up to a multiple of ``window_size`` when needed.

    Returns:
        ``(B*nH*nW)×ws×ws×C`` windows (row-major over the window grid, batch outermost) and the
        padded size ``(Hp, Wp)``. When one window covers the whole (unpadded) grid the result
        is a view of ``x``.
    """
    b, h, w, c = x.shape
    pad_h = -h % window_size
    pad_w = -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    nh, nw = hp // window_size, wp // window_size
    if nh == 1 and nw == 1:
        return x, (hp, wp)  # a single window: nothing to rearrange
    x = x.view(b, nh, window_size, nw, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5)  # B×nH×nW×ws×ws×C
    return windows.reshape(b * nh * nw, window_size, window_size, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: ``(B*nH*nW)×ws×ws×C`` windows.
        window_size: side ``ws`` of the windows.
        pad_hw: padded grid size ``(Hp, Wp)``, multiples of ``ws``.
        hw: unpadded size ``(H, W)``; padding beyond it is cropped away.

    Returns:
        ``B×H×W×C`` grid (a view when no rearranging or cropping is needed).
    """
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    c = windows.shape[-1]
    b = windows.shape[0] // (nh * nw)
    if nh == 1 and nw == 1:
        x = windows.view(b, hp, wp, c)
    else:
        x = windows.view(b, nh, nw, window_size, window_size, c)
        # B×nH×nW×ws×ws×C -> B×nH×ws×nW×ws×C -> B×Hp×Wp×C
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def do_pool(x: torch.Tensor, pool: nn.Module | None, norm: nn.Module | None = None) -> torch.Tensor:
    """Apply a 2D pooling module to a channels-last ``B×H×W×C`` grid, returning ``B×H'×W'×C``.

    ``norm`` (optional) is applied to the pooled channels-last result.
    """
    if pool is None:
        return x
    x = pool(x.permute(0, 3, 1, 2))  # B×C×H×W view -> B×C×H'×W'
    x = x.permute(0, 2, 3, 1)  # B×H'×W'×C
    if norm is not None:
        x = norm(x)
    return x


class PatchEmbed(nn.Module):
    """Strided convolution: ``B×in_chans×H×W`` image -> ``B×H'×W'×embed_dim`` tokens."""

    def __init__(
        self,
        kernel_size: tuple[int, ...] = (7, 7),
        stride: tuple[int, ...] = (4, 4),
        padding: tuple[int, ...] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` image -> ``B×H'×W'×C`` tokens (channels-last view of the conv)."""
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a ``B×H×W×dim`` grid, optionally max-pooling the queries.

    With ``q_pool`` set, the output grid is the pooled query grid (``B×H'×W'×dim_out``),
    which is how Hiera downsamples between stages.
    """

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None
    ) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out={dim_out} is not divisible by num_heads={num_heads}.")
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×H×W×dim`` -> ``B×H'×W'×dim_out`` (``H'=H`` unless queries are pooled)."""
        b, h_in, w_in, _ = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, h_in, w_in, 3, self.dim_out)  # B×H×W×3×C
        q = qkv[:, :, :, 0]  # B×H×W×C (strided view)
        h, w = h_in, w_in
        if self.q_pool is not None:
            q = do_pool(q, self.q_pool)  # B×H'×W'×C
            h, w = q.shape[1:3]
        # Split heads: B×N×heads×hd -> B×heads×N×hd (views, SDPA accepts the strides)
        q = q.reshape(b, h * w, heads, -1).transpose(1, 2)
        kv = qkv.reshape(b, h_in * w_in, 3, heads, self.dim_out // heads)  # B×N×3×heads×hd
        k = kv[:, :, 1].transpose(1, 2)
        v = kv[:, :, 2].transpose(1, 2)
        out = sdpa(q, k, v)  # B×heads×N'×hd
        out = out.transpose(1, 2).reshape(b, h, w, self.dim_out)  # B×H'×W'×C
        return self.proj(out)


def _make_norm(norm_layer: str | Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """Resolve ``norm_layer`` given as a ``torch.nn`` class name (eps 1e-6) or a factory."""
    if isinstance(norm_layer, str):
        return partial(getattr(nn, norm_layer), eps=1e-6)
    return norm_layer


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block of Hiera with windowed attention and optional query pooling.

    Input ``B×H×W×dim``, output ``B×H'×W'×dim_out``. When ``dim != dim_out`` the residual
    goes through ``proj`` (and the same pooling as the queries). ``window_size=0`` means global
    attention.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_layer: str | Callable[[int], nn.Module] = "LayerNorm",
        q_stride: tuple[int, int] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        norm = _make_norm(norm_layer)
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool: nn.Module | None = None
        if q_stride:
            self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False)

        self.norm1 = norm(dim)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.drop_path: nn.Module = (
            StochasticDepth(drop_path, "row") if drop_path > 0.0 else nn.Identity()
        )
        self.norm2 = norm(dim_out)
        self.mlp = MLP(
            dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=act_layer
        )
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×H×W×dim`` -> ``B×H'×W'×dim_out``."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = do_pool(self.proj(x), self.pool)  # B×H'×W'×dim_out

        ws = self.window_size
        if ws > 0:
            x, (hp, wp) = window_partition(x, ws)  # (B*nW)×ws×ws×dim
            n_rows, n_cols = hp // ws, wp // ws
        x = self.attn(x)  # windows (or the whole grid) with pooled queries
        if ws > 0:
            ws_out = x.shape[1]  # window side after query pooling
            x = window_unpartition(
                x, ws_out, (n_rows * ws_out, n_cols * ws_out), tuple(shortcut.shape[1:3])
            )

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))
