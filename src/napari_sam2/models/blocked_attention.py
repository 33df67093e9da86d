"""Softmax attention as plain matrix products over blocks of query rows.

Torch's fused attention kernel wants values as wide as keys and, on some CPUs, is slower in
bfloat16 than plain products; :func:`chunked_attention` takes any value width and keeps each
block of scores in cache. Its results equal the fused kernel's to float32 rounding (in
bfloat16 the scores are rounded to bfloat16 before the softmax, within the fused bfloat16
kernel's own error).
"""

from __future__ import annotations

import torch

__all__ = ["chunked_attention"]

_BLOCK_BYTES = 16 * 2**20  # score block per step (fits a typical L2/L3 slice)


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
