"""Signatures: short digests naming content, so stored embeddings are never used for
anything other than what they were computed from.

* :func:`frame_signature` -- one raw frame (its dtype, shape and bytes), computed when the
  frame is read anyway: about 0.2 ms per megabyte (xxHash's XXH3-128);
* :func:`digest` -- any JSON-serialisable description (a store's key, a stack's identity).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xxhash

__all__ = ["digest", "frame_signature", "signature_words"]


def frame_signature(frame: np.ndarray) -> str:
    """32 hex digits naming a frame's dtype, shape and pixel values (any array; made
    contiguous for hashing if it is not)."""
    array = np.ascontiguousarray(frame)
    h = xxhash.xxh3_128()
    h.update(f"{array.dtype.str}|{array.shape}|".encode())
    h.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return h.hexdigest()


def signature_words(signature: str) -> np.ndarray:
    """A 32-hex-digit signature as the two non-zero ``uint64`` words a store keeps per frame
    (0 means "no complete frame here")."""
    if len(signature) != 32:
        raise ValueError(f"a frame signature has 32 hex digits, got {signature!r}")
    words = np.array([int(signature[:16], 16), int(signature[16:], 16)], dtype=np.uint64)
    words[words == 0] = 1  # keep 0 free for "absent"; one value in 2**64 merges with 1
    return words


def digest(description: Any) -> str:
    """32 hex digits naming a JSON-serialisable description (key order does not matter)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return xxhash.xxh3_128(text.encode()).hexdigest()
