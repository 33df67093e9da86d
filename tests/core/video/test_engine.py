"""The pieces behind the video predictor, built alone: the frame encoder (frames -> cached
features), the tracking engine (one frame for all objects) and the propagation plans. The
engine, driven by hand on a state built from its parts, gives the predictor's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2.core.stacks.source import open_frames
from napari_sam2.core.video.engine import TrackingEngine
from napari_sam2.core.video.frame_encoder import FrameEncoder, FrameFeatures
from napari_sam2.core.video.predictor import SAM2VideoPredictor
from napari_sam2.core.video.prompts import point_inputs_from
from napari_sam2.core.video.propagation import passes_of_propagate, prompted_frames
from napari_sam2.core.video.results import ResultStore
from napari_sam2.core.video.state import TempOutput, VideoInferenceState
from napari_sam2.models.build import build_model

SIZE = 256


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("sam2.1_hiera_t", image_size=SIZE, video=True)
    with torch.no_grad():
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 10.0
    return net.eval()


def stack(n: int = 4, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 50, (n, size, size), dtype=np.uint8)
    for t in range(n):
        frames[t, 20:40, 10 + 3 * t : 30 + 3 * t] = 230
    return frames


def new_state(encoder: FrameEncoder, frames: np.ndarray) -> VideoInferenceState:
    source = open_frames(frames)
    cpu = torch.device("cpu")
    return VideoInferenceState(
        frames=source, owns_frames=True, device=cpu, storage_device=cpu,
        feature_cache=encoder.new_cache(), results=ResultStore(source.num_frames, 8, cpu),
    )


def test_frame_encoder_alone_encodes_once_and_sizes_its_cache(model, monkeypatch):
    encoder = FrameEncoder(model, feature_cache_mib=64)
    state = new_state(encoder, stack())
    calls = []
    original = model.forward_image
    monkeypatch.setattr(model, "forward_image", lambda x: calls.append(x.shape) or original(x))
    with torch.inference_mode():
        first = encoder.features(state, 2)
        again = encoder.features(state, 2)
    assert isinstance(first, FrameFeatures) and first is again and len(calls) == 1
    assert calls[0] == (1, 3, SIZE, SIZE)
    per_frame = sum(t.numel() * t.element_size() for t in first.backbone_fpn)
    assert state.feature_cache.max_items == 64 * 2**20 // per_frame  # grown to the budget
    feats, pos, sizes = encoder.batched(state, 2, batch_size=3)
    assert [f.shape[1] for f in feats] == [3, 3, 3] and sizes[-1] == (SIZE // 16, SIZE // 16)
    fixed = FrameEncoder(model, feature_cache_size=2)
    assert fixed.new_cache().max_items == 2
    with pytest.raises(ValueError, match="feature_cache_mib"):
        FrameEncoder(model, feature_cache_mib=-1)
    state.close()


def test_engine_alone_tracks_as_the_predictor(model):
    frames = stack()
    engine = TrackingEngine(model, FrameEncoder(model), fill_hole_area=0)
    state = new_state(engine.encoder, frames)
    obj = state.add_object(1)
    clicks = point_inputs_from([[20.0, 30.0]], [1], None, True, (64, 64), SIZE, state.device)
    with torch.inference_mode():
        out, masks = engine.run_frame(
            state, obj, 0, is_init_cond_frame=True, point_inputs=clicks, mask_inputs=None,
            reverse=False, run_mem_encoder=False,
        )
    assert masks.shape == (1, 1, SIZE // 4, SIZE // 4) and out.maskmem_features is None
    obj.point_inputs[0] = clicks
    obj.temp_outputs[0] = TempOutput(out, True)
    assert prompted_frames(state) == [0]
    passes = passes_of_propagate(state, "forward", None, None)
    assert passes == [(range(0, 4), False)]
    got = list(engine.run(state, passes))
    assert [f for f, _, _ in got] == [0, 1, 2, 3]
    assert not obj.temp_outputs and state.results.is_cond(obj.key, 0)
    assert all(state.results.get(obj.key, t) is not None for t in range(4))

    # the facade, on the same weights and frames, gives the same masks
    predictor = SAM2VideoPredictor(model, fill_hole_area=0)
    st = predictor.init_state(frames)
    predictor.add_new_points_or_box(st, 0, 1, points=[[20.0, 30.0]], labels=[1])
    expected = list(predictor.propagate(st, "forward"))
    for (f, ids, m), (f2, ids2, m2) in zip(got, expected):
        assert f == f2 and ids == ids2 == [1]
        assert m.shape == (1, 1, 64, 64) and torch.equal(m, m2)
    assert (expected[0][2] > 0).any()  # a mask, not an empty result
    st.close()
    state.close()


def test_settings_set_on_the_predictor_reach_the_engine(model):
    predictor = SAM2VideoPredictor(model, fill_hole_area=0, feature_cache_size=3)
    predictor.non_overlap_masks = True
    predictor.fill_hole_area = 5
    assert predictor.engine.non_overlap_masks is True and predictor.engine.fill_hole_area == 5
    assert predictor.feature_cache_size == 3 and predictor.encoder.feature_cache_size == 3
