"""Attention kernels for the CPU beyond torch's fused ``scaled_dot_product_attention``.

Memory attention's cross-attention has few, narrow inputs: its keys and values are 64-channel
memory tokens projected to 256 channels. Since every row of the attention weights sums to
one, ``softmax(q kᵀ) (m W_vᵀ + b) = (softmax(q kᵀ) m) W_vᵀ + b``: the weighted sum can be taken
over the 64-channel memory tokens and projected afterwards (:func:`attend_then_project`),
which does a quarter of the work in the second product; torch's fused kernel wants values
as wide as keys, so that weighted sum uses the blocked kernel
(:mod:`~napari_sam2.models.blocked_attention`). :func:`sdpa` is the attention every layer
calls; which kernel long attention uses is measured per machine
(:mod:`~napari_sam2.models.kernel_choice`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocked_attention import chunked_attention
from .few_keys_attention import few_keys_attention
from .kernel_choice import attention_kernel, attention_kind

__all__ = ["sdpa", "chunked_attention", "attend_then_project"]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention, ``B×heads×N×d`` in and out. Long attention and attention of many queries
    to few keys use, on the CPU, the kernel measured fastest on this machine
    (:mod:`~napari_sam2.models.kernel_choice`): torch's fused kernel,
    :func:`chunked_attention`, (for bfloat16) the fused kernel in float32, or (few keys)
    :func:`few_keys_attention`. Everything
    else, and any attention with dropout, uses torch's fused kernel."""
    kind = attention_kind(q, k) if dropout_p == 0.0 and q.device.type == "cpu" else None
    if kind is not None:
        dtype = q.dtype
        if torch.is_autocast_enabled("cpu") and dtype == torch.float32:
            dtype = torch.get_autocast_dtype("cpu")  # what the fused kernel would run in
        kernel = attention_kernel("cpu", dtype, kind)
        if kernel == "blocked":
            with torch.autocast("cpu", enabled=False):
                return chunked_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        if kernel == "few-keys-fp32":
            return few_keys_attention(q, k, v).to(dtype)
        if kernel == "fused-fp32" and dtype != torch.float32:
            with torch.autocast("cpu", enabled=False):  # autocast would cast them back
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            return out.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def attend_then_project(
    q: torch.Tensor,
    k: torch.Tensor,
    tokens: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Attention whose values are a linear map of narrow tokens, mixing before projecting.

    Args:
        q: queries, ``B×heads×Nq×d``.
        k: keys, ``B×heads×Nk×d``.
        tokens: the unprojected value tokens, ``B×Nk×c``.
        weight: the value projection, ``(heads*d)×c`` (``nn.Linear`` layout).
        bias: its bias, ``heads*d``, or ``None``.

    Returns:
        ``B×heads×Nq×d``: the same as attending to ``tokens @ weight.T + bias`` split into heads.
    """
    heads, d = q.shape[1], q.shape[-1]
    shared = tokens[:, None].expand(-1, heads, -1, -1).to(q.dtype)
    mixed = chunked_attention(q, k, shared, scale=d**-0.5)  # B×heads×Nq×c
    w = weight.to(q.dtype).unflatten(0, (heads, d))  # heads×d×c
    out = torch.matmul(mixed, w.transpose(-1, -2))  # B×heads×Nq×d
    if bias is not None:
        out = out + bias.to(q.dtype).view(heads, 1, d)
    return out
