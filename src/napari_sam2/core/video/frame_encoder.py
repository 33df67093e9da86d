"""A frame's path to the model: source -> normalisation -> model input -> image encoder ->
feature cache, with the stack's embedding store behind the cache.

:class:`FrameEncoder` reads a frame from a state's
:class:`~napari_sam2.core.stacks.source.FrameSource` only when its features are needed,
converts it with :func:`~napari_sam2.core.stacks.model_input.video_frame_to_tensor` (bicubic
resize to ``image_size × image_size`` as SAM 2's video frame loader, ``uint8`` frames as 8-bit
images -> ImageNet mean/std), runs the image encoder on it and keeps the result in the state's
:class:`~napari_sam2.core.video.feature_cache.FeatureCache`, sized by a memory budget unless
its size is fixed. Between the two sits the state's embedding store
(:mod:`napari_sam2.core.store`), if it has one: features are taken from RAM first, then from
disk (when stored for the same raw frame), and only then computed, and computed features are
written to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..stacks.model_input import check_image, video_frame_to_tensor
from ..stacks.source import frame_read_lock
from ..store.signature import frame_signature
from .feature_cache import FeatureCache

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base
    from .state import VideoInferenceState

__all__ = ["FrameEncoder", "FrameFeatures"]

MIN_AUTO_CACHE = 4  # frames, before the first one is encoded and its size known


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """Image-encoder output of one frame (batch of 1), as cached: the FPN levels
    (``1×C×h×w`` each, highest resolution first) and their position encodings."""

    backbone_fpn: tuple[torch.Tensor, ...]
    vision_pos_enc: tuple[torch.Tensor, ...]


class FrameEncoder:
    """Image features of a stack's frames, computed once and cached per state.

    Args:
        model: the SAM 2 network.
        feature_cache_size: fixed capacity of each state's feature cache, or ``None`` to size
            it by ``feature_cache_mib``.
        feature_cache_mib: memory budget of the feature cache when its size is not fixed.
    """

    def __init__(
        self, model: SAM2Base, feature_cache_size: int | None = None,
        feature_cache_mib: float = 512,
    ) -> None:
        if feature_cache_size is not None:
            FeatureCache(feature_cache_size)  # validates
        if not feature_cache_mib >= 0:
            raise ValueError(f"feature_cache_mib must be >= 0, got {feature_cache_mib!r}.")
        self.model = model
        self.feature_cache_size = feature_cache_size
        self.feature_cache_mib = float(feature_cache_mib)

    def new_cache(self) -> FeatureCache:
        """An empty feature cache for a new state (grows to the budget once a frame's size is
        known, unless its size is fixed)."""
        size = MIN_AUTO_CACHE if self.feature_cache_size is None else self.feature_cache_size
        return FeatureCache(size)

    def features(self, state: VideoInferenceState, frame_idx: int) -> FrameFeatures:
        """Features of one frame, from the cache or by reading and encoding the frame.

        Thread-safe: reads of one frame source are serialised (see
        :func:`~napari_sam2.core.stacks.source.frame_read_lock`), and if another thread (the
        background pre-encoder) is encoding this frame now, this waits for its result instead
        of encoding the frame a second time. With a store, the frame's raw pixels are read
        and signed either way; its features come from disk when stored for that signature.
        """

        def compute() -> FrameFeatures:
            with frame_read_lock(state.frames):
                raw = state.frames.read_raw(frame_idx)
            store = state.store
            signature = frame_signature(raw) if store is not None else ""
            if store is not None:
                loaded = store.load(frame_idx, signature, state.device)
                if loaded is not None:
                    feats = FrameFeatures(tuple(loaded[0]), tuple(loaded[1]))
                    self._size_cache(state, feats)
                    return feats
            image = check_image(state.frames.normalize(raw), f"frame {frame_idx}")
            dtype = next(self.model.parameters()).dtype
            x = video_frame_to_tensor(image, self.model.image_size, state.device)[None].to(dtype)
            out = self.model.forward_image(x)
            feats = FrameFeatures(tuple(out["backbone_fpn"]), tuple(out["vision_pos_enc"]))
            if store is not None:
                store.save(frame_idx, signature, list(feats.backbone_fpn),
                           list(feats.vision_pos_enc))
            self._size_cache(state, feats)
            return feats

        return state.feature_cache.get_or_compute(frame_idx, compute)

    def store_frame(self, state: VideoInferenceState, frame_idx: int) -> bool:
        """Make sure frame ``frame_idx``'s features are in the state's store (encoding the
        frame only if they are not there for its current pixels); returns whether it was
        encoded. Without a store, encodes it into the feature cache."""
        store = state.store
        if store is not None:
            with frame_read_lock(state.frames):
                raw = state.frames.read_raw(frame_idx)
            if store.has(frame_idx, frame_signature(raw)):
                return False
        cached = frame_idx in state.feature_cache
        feats = self.features(state, frame_idx)
        if cached and store is not None:  # in RAM but not on disk: write it now
            store.save(frame_idx, frame_signature(raw), list(feats.backbone_fpn),
                       list(feats.vision_pos_enc))
        return not cached

    def batched(
        self, state: VideoInferenceState, frame_idx: int, batch_size: int = 1
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """``(vision_feats, vision_pos_embeds, feat_sizes)`` of a frame for ``batch_size``
        objects, as ``SAM2Base._prepare_backbone_features`` returns them (``HW×B×C`` tokens
        per level)."""
        feats = self.features(state, frame_idx)
        expanded = {
            "backbone_fpn": [x.expand(batch_size, -1, -1, -1) for x in feats.backbone_fpn],
            "vision_pos_enc": [x.expand(batch_size, -1, -1, -1) for x in feats.vision_pos_enc],
        }
        _, vision_feats, vision_pos, feat_sizes = self.model._prepare_backbone_features(expanded)
        return vision_feats, vision_pos, feat_sizes

    def _size_cache(self, state: VideoInferenceState, feats: FrameFeatures) -> None:
        """With no fixed ``feature_cache_size``, let the cache hold as many frames as fit in
        ``feature_cache_mib`` (never fewer than it holds now). The position encodings are
        shared by all frames and not counted."""
        if self.feature_cache_size is not None:
            return
        per_frame = sum(t.numel() * t.element_size() for t in feats.backbone_fpn)
        fit = int(self.feature_cache_mib * 2**20 // max(per_frame, 1))
        cache = state.feature_cache
        if fit > cache.max_items:
            cache.max_items = fit
