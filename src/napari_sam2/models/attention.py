"""Multi-head attention with optional channel down-projection, and its rotary variant.

Both use ``torch.nn.functional.scaled_dot_product_attention``. Parameters are ``q_proj``,
``k_proj``, ``v_proj`` and ``out_proj`` (the checkpoint layout of SAM 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention_kernels import attend_then_project, sdpa
from .kernel_choice import value_order
from .position_encoding import apply_rope, axial_rope_tables

__all__ = ["Attention", "RoPEAttention"]


class Attention(nn.Module):
    """Attention from ``B×Nq×embedding_dim`` queries to ``B×Nk×kv_in_dim`` keys/values.

    Queries, keys and values are projected to ``embedding_dim // downsample_rate`` channels,
    split into ``num_heads`` heads, and the result is projected back to ``embedding_dim``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the attention width {self.internal_dim}."
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``B×N×C`` to ``B×heads×N×(C/heads)``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``B×heads×N×c`` to ``B×N×(heads*c)``."""
        return x.transpose(1, 2).flatten(2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        out = sdpa(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self._merge_heads(out))

    def project_queries(self, q: torch.Tensor) -> torch.Tensor:
        """``B×Nq×embedding_dim`` -> ``B×heads×Nq×c`` projected queries."""
        return self._split_heads(self.q_proj(q))

    def project_keys(self, k: torch.Tensor) -> torch.Tensor:
        """``B×Nk×kv_in_dim`` -> ``B×heads×Nk×c`` projected keys."""
        return self._split_heads(self.k_proj(k))

    def project_values(self, v: torch.Tensor) -> torch.Tensor:
        """``B×Nk×kv_in_dim`` -> ``B×heads×Nk×c`` projected values."""
        return self._split_heads(self.v_proj(v))

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        projected: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attention output ``B×Nq×embedding_dim``. ``projected`` may hold already projected
        ``"q"``, ``"k"`` or ``"v"`` (``B×heads×N×c``); those inputs are then not used."""
        projected = projected or {}
        q = projected["q"] if "q" in projected else self.project_queries(q)
        k = projected["k"] if "k" in projected else self.project_keys(k)
        v = projected["v"] if "v" in projected else self.project_values(v)
        return self._attend(q, k, v)


class RoPEAttention(Attention):
    """Attention with 2D axial rotary position encoding on queries and keys.

    Queries are a square grid of tokens (``feat_sizes`` at 1024 px, recomputed for other sizes).
    With ``rope_k_repeat`` the keys may hold several such grids back to back (memories of several
    frames). The last ``num_k_exclude_rope`` keys (object pointers) are left unrotated.
    """

    def __init__(
        self,
        *args,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._tables: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._head_dim = self.internal_dim // self.num_heads
        self._default_grid = (int(feat_sizes[0]), int(feat_sizes[1]))

    def _rope(self, num_tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine/sine tables for a square grid of ``num_tokens`` tokens, cached per size/device."""
        if num_tokens == self._default_grid[0] * self._default_grid[1]:
            w, h = self._default_grid
        else:
            w = h = math.isqrt(num_tokens)
            if w * h != num_tokens:
                raise ValueError(
                    f"RoPE attention needs a square token grid, got {num_tokens} tokens."
                )
        key = (w, h, str(device))
        if key not in self._tables:
            cos, sin = axial_rope_tables(self._head_dim, w, h, self.rope_theta)
            self._tables[key] = (cos.to(device), sin.to(device))
        return self._tables[key]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        late_values = self._mix_before_value_projection(v)
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        if not late_values:
            v = self._split_heads(self.v_proj(v))

        cos, sin = self._rope(q.shape[-2], q.device)
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError(
                "Queries and keys differ in length; this layer needs rope_k_repeat=True."
            )
        q = apply_rope(q, cos, sin)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        if num_k_rope > 0:
            k = torch.cat((apply_rope(k[:, :, :num_k_rope], cos, sin), k[:, :, num_k_rope:]), dim=2)
        if late_values:
            out = attend_then_project(q, k, v, self.v_proj.weight, self.v_proj.bias)
            return self.out_proj(self._merge_heads(out))
        return self._attend(q, k, v)

    def _mix_before_value_projection(self, v: torch.Tensor) -> bool:
        """Whether to weight the narrow value tokens first and project them afterwards (see
        :mod:`~napari_sam2.models.attention_kernels`): on the CPU, in eval mode, when the
        tokens are narrower than a head (memory attention's 64-channel memories), and where
        that measures faster than projecting first
        (:func:`~napari_sam2.models.kernel_choice.value_order`)."""
        if not (
            v.device.type == "cpu"
            and not (self.training and self.dropout_p > 0)
            and self.kv_in_dim < self._head_dim
        ):
            return False
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
        else:
            dtype = self.q_proj.weight.dtype
        return value_order("cpu", dtype) == "mix-first"
