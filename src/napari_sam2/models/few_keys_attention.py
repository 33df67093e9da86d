"""Softmax attention of many queries to a few keys, with the keys as rows.

The mask decoder's image-to-token attention has thousands of image tokens as queries and a
handful of prompt tokens (about 8) as keys. Laid out the usual way, its scores are
``Nq×8`` rows and a softmax along rows of eight values runs far below the machine's speed
(on one CPU it took 2.5 ms of the 2.8 ms of the whole attention); torch's fused kernel is
not faster there. :func:`few_keys_attention` computes the transposed scores ``k qᵀ``
(``8×Nq``), normalises each column, and mixes the values as ``vᵀ p``: the same numbers, in
float32 whatever the inputs' dtype (bfloat16 scores over so few keys would show in the
masks), at a fraction of the time. Whether it is faster is measured per machine
(:mod:`~napari_sam2.models.kernel_choice`).
"""

from __future__ import annotations

import torch

__all__ = ["few_keys_attention"]


def few_keys_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Softmax attention computed key-major, in float32.

    Args:
        q: queries, ``B×heads×Nq×E``.
        k: keys, ``B×heads×Nk×E`` (few: tens at most).
        v: values, ``B×heads×Nk×Ev``.
        scale: score scale; ``1/sqrt(E)`` by default.

    Returns:
        ``B×heads×Nq×Ev`` in ``q``'s dtype (a transposed view when ``q`` is float32).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.matmul(k.float() * scale, q.float().transpose(-1, -2))  # B×h×Nk×Nq
        weights = torch.softmax(scores, dim=-2)  # over the keys
        out = torch.matmul(v.float().transpose(-1, -2), weights)  # B×h×Ev×Nq
    return out.transpose(-1, -2).to(q.dtype)
