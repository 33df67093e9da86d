"""What identifies the image features a network computes: a digest of the weights and the
settings that produce them, never a file name.

Stored embeddings (:mod:`napari_sam2.core.store`) are valid only for the network that made
them. :func:`encoder_identity` names that network by content: a hash of every tensor that
goes into ``SAM2Base.forward_image`` (the image encoder, and the mask decoder's ``conv_s0`` /
``conv_s1`` projections of the high-resolution levels), plus the encoder's settings. Two files
holding the same weights get the same identity; a fine-tuned copy whose encoder changed gets
another one. The digest is kept on the network and recomputed only when a weight was
replaced or changed in place.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
import xxhash

from .common import version_key

if TYPE_CHECKING:
    from .sam2 import SAM2Base

__all__ = ["encoder_identity", "encoder_tensors"]


def encoder_tensors(model: SAM2Base) -> list[tuple[str, torch.Tensor]]:
    """``(state-dict name, tensor)`` of every weight and buffer ``forward_image`` reads."""
    named = [(f"image_encoder.{k}", v) for k, v in model.image_encoder.state_dict().items()]
    if model.use_high_res_features_in_sam:
        decoder = model.sam_mask_decoder
        for part in ("conv_s0", "conv_s1"):
            named += [
                (f"sam_mask_decoder.{part}.{k}", v)
                for k, v in getattr(decoder, part).state_dict().items()
            ]
    return sorted(named, key=lambda item: item[0])


def _digest(named: list[tuple[str, torch.Tensor]]) -> str:
    h = xxhash.xxh3_128()
    for name, tensor in named:
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            # raw bytes whatever the dtype (bfloat16 has no numpy type: read it as int16)
            raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            h.update(raw.numpy())
    return h.hexdigest()


def encoder_identity(model: SAM2Base) -> dict[str, Any]:
    """``{"weights": hex digest, "settings": {...}}`` of the network's feature extractor.

    ``settings`` holds what shapes the features besides the weights: the input size, the
    high-resolution levels, the levels dropped by the neck (``scalp``), its top-down levels and
    fusion. JSON-serialisable. About 20 ms per 100 MB of weights the first time, free after.
    """
    named = encoder_tensors(model)
    versions = version_key(*(t for _, t in named))
    cached = getattr(model, "_encoder_identity", None)
    if versions is not None and cached is not None and cached[0] == versions:
        return json.loads(cached[1])
    encoder = model.image_encoder
    neck = encoder.neck
    identity = {
        "weights": _digest(named),
        "settings": {
            "class": type(model).__name__,
            "image_size": int(model.image_size),
            "high_res_features": bool(model.use_high_res_features_in_sam),
            "scalp": int(getattr(encoder, "scalp", 0)),
            "fpn_top_down_levels": [int(i) for i in neck.fpn_top_down_levels],
            "fuse_type": str(neck.fuse_type),
            "fpn_interp_model": str(neck.fpn_interp_model),
        },
    }
    text = json.dumps(identity, sort_keys=True)
    if versions is not None:
        model._encoder_identity = (versions, text)
    return json.loads(text)
