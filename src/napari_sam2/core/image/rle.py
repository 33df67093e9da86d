"""Run-length encoding of binary masks, in the layouts of ``pycocotools``.

* An *uncompressed RLE* is ``{"size": [h, w], "counts": [int, ...]}``: run lengths over the
  mask read in column-major (Fortran) order, alternating background / foreground and starting
  with background (a first run of length 0 when the top-left pixel is foreground).
* A *COCO RLE* is the same with ``counts`` compressed to an ASCII string, exactly as
  ``pycocotools.mask.frPyObjects`` / ``encode`` produce it (as ``str``, ready for JSON).

Both are produced and read here without ``pycocotools``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["area_from_rle", "coco_decode_rle", "coco_encode_rle", "mask_to_rle", "rle_to_mask"]


def mask_to_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """``B×H×W`` bool masks -> ``B`` uncompressed RLEs (column-major, zeros first)."""
    b, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(b, h * w)
    changes = torch.nonzero(flat[:, 1:] != flat[:, :-1], as_tuple=False).cpu().numpy()
    first = flat[:, 0].cpu().numpy() if h * w else np.zeros(b, dtype=bool)
    splits = np.searchsorted(changes[:, 0], np.arange(b + 1))
    out = []
    for i in range(b):
        starts = changes[splits[i] : splits[i + 1], 1] + 1
        edges = np.concatenate([[0], starts, [h * w]])
        counts = np.diff(edges).tolist()
        if first[i]:
            counts.insert(0, 0)
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed (or COCO string) RLE -> ``H×W`` bool array (C-contiguous)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = coco_decode_rle(rle)["counts"]
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h}×{w} = {h * w}")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.ascontiguousarray(np.repeat(values, counts).reshape(w, h).T)


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO compressed RLE ``{"size": [h, w], "counts": str}``.

    Same bytes as ``pycocotools.mask.frPyObjects(rle, h, w)`` (counts decoded to ``str``):
    from the fourth run on, each count is stored as the difference to the count two runs
    earlier; every value is written in little-endian groups of 5 bits, one character
    (``48 + group``, ``+ 32`` when more groups follow) per group, the last group's top bit
    carrying the sign.
    """
    counts = [int(c) for c in rle["counts"]]
    chars: list[str] = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        while True:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr(48 + (group | (0x20 if more else 0))))
            if not more:
                break
    return {"size": [int(v) for v in rle["size"]], "counts": "".join(chars)}


def coco_decode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """COCO compressed RLE (``counts`` as ``str`` or ``bytes``) -> uncompressed RLE."""
    text = rle["counts"]
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    pos = 0
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(data):
                raise ValueError("truncated COCO RLE string")
            group = data[pos] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return {"size": [int(v) for v in rle["size"]], "counts": counts}
