"""The video predictor's default feature cache holds as many frames as fit in its budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2.core.video.predictor import SAM2VideoPredictor
from napari_sam2.models.build import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_t", image_size=256, video=True)


def _frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)


def _per_frame_bytes(state) -> int:
    feats = state.feature_cache.get(0)
    return sum(t.numel() * t.element_size() for t in feats.backbone_fpn)


def test_default_cache_fits_the_budget(model):
    predictor = SAM2VideoPredictor(model, feature_cache_mib=8)
    with predictor.init_state(_frames()) as state:
        assert state.feature_cache.max_items == 4  # before any frame is encoded
        predictor.encode_frame(state, 0)
        expected = 8 * 2**20 // _per_frame_bytes(state)
        assert expected > 4 and state.feature_cache.max_items == expected
        for t in range(12):
            predictor.encode_frame(state, t)
        assert len(state.feature_cache) == min(12, expected)


def test_fixed_size_and_small_budget_are_kept(model):
    fixed = SAM2VideoPredictor(model, feature_cache_size=2)
    with fixed.init_state(_frames()) as state:
        fixed.encode_frame(state, 0)
        assert state.feature_cache.max_items == 2
    tiny_budget = SAM2VideoPredictor(model, feature_cache_mib=0)
    with tiny_budget.init_state(_frames()) as state:
        tiny_budget.encode_frame(state, 0)
        assert state.feature_cache.max_items == 4  # never below the minimum
    with pytest.raises(ValueError, match="feature_cache_mib"):
        SAM2VideoPredictor(model, feature_cache_mib=-1)
