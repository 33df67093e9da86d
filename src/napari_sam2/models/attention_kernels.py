"""Attention kernels for the CPU beyond torch's fused ``scaled_dot_product_attention``.

Memory attention's cross-attention has few, narrow inputs: its keys and values are 64-channel
memory tokens projected to 256 channels. Since every row of the attention weights sums to
one, ``softmax(q kᵀ) (m W_vᵀ + b) = (softmax(q kᵀ) m) W_vᵀ + b``: the weighted sum can be taken
over the 64-channel memory tokens and projected afterwards (:func:`attend_then_project`),
which does a quarter of the work in the second product. Torch's fused kernel wants values as
wide as keys, so :func:`chunked_attention` computes attention in blocks of query rows that
keep the score block in cache. The results equal the fused kernel's to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sdpa", "chunked_attention", "attend_then_project"]

_BLOCK_BYTES = 16 * 2**20  # score block per step (fits a typical L2/L3 slice)
_LONG = 1024  # keys; below this (Hiera's windows) the fused bfloat16 kernel is the faster


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Torch's fused attention, ``B×heads×N×d`` in and out. On the CPU, bfloat16 inputs with
    long key sequences are attended in float32 (there the CPU's fused kernel is no faster in
    bfloat16, and float32 products may use the bfloat16 units; see
    :mod:`~napari_sam2.models.precision`) and cast back."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[-2] >= _LONG:
        with torch.autocast("cpu", enabled=False):  # autocast would cast them back
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), dropout_p=dropout_p
            )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Softmax attention in blocks of query rows.

    Args:
        q: queries, ``B×heads×Nq×E``.
        k: keys, ``B×heads×Nk×E``.
        v: values, ``B×heads×Nk×Ev`` (``Ev`` may differ from ``E``).
        scale: score scale; ``1/sqrt(E)`` by default.

    Returns:
        ``B×heads×Nq×Ev``, in ``q``'s dtype.
    """
    b, h, nq, e = q.shape
    nk, ev = k.shape[-2], v.shape[-1]
    scale = e**-0.5 if scale is None else scale
    rows = max(16, min(nq, _BLOCK_BYTES // max(1, nk * q.element_size())))
    out = torch.empty(b, h, nq, ev, dtype=q.dtype, device=q.device)
    for bi in range(b):
        for hi in range(h):
            keys_t = k[bi, hi].t().contiguous()  # E×Nk
            values = v[bi, hi]
            queries = q[bi, hi] * scale
            for start in range(0, nq, rows):
                scores = torch.mm(queries[start : start + rows], keys_t)
                weights = torch.softmax(scores, dim=-1)
                torch.mm(weights, values, out=out[bi, hi, start : start + rows])
    return out


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
