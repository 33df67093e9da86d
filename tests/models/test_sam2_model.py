"""Parity of the assembled SAM 2 network (``SAM2Base``) with the reference ``sam2==1.1.0``.

Both networks hold the same random weights (the reference's, loaded strictly into ours) and run
in fp32 eval mode at image size 256 (512 once). Video tracking is emulated the way the video
predictor drives ``track_step``: a memory bank per object, memories stored in bfloat16.
Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch

from napari_sam2.models.memory_conditioning import select_closest_cond_frames
from napari_sam2.models.postprocessing import fill_holes_in_mask_scores
from napari_sam2.models.sam2 import NO_OBJ_SCORE, SAM2Base

ref_base = pytest.importorskip("sam2.modeling.sam2_base")
ref_utils = pytest.importorskip("sam2.modeling.sam2_utils")

TOL = 1e-4
SIZE = 256
CONFIGS = ["sam2.1_hiera_t", "sam2_hiera_t"]
_FEATURES: dict[tuple[str, int, str], Any] = {}
# Shift of the object-score logit so that, with these random weights, the object is present on
# some frames and absent on others during tracking (both code paths run).
OBJ_SCORE_SHIFT = {"sam2.1_hiera_t": -0.15, "sam2_hiera_t": 0.1}
_TRACKING_PAIRS: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}


def _max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference over nested tensors; shapes, dtypes, None-ness must agree."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
        return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        return max((_max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max((_max_diff(x, y) for x, y in zip(a, b)), default=0.0)
    assert a == b, (a, b)
    return 0.0


def _check(name: str, a: Any, b: Any) -> None:
    diff = _max_diff(a, b)
    print(f"  {name}: max abs diff {diff:.3g}")
    assert diff <= TOL, f"{name}: max abs diff {diff:.3g} > {TOL}"


def _backbone(model: torch.nn.Module, config: str, size: int, who: str, n: int = 3):
    """``forward_image`` output and prepared features of ``n`` fixed random frames (cached)."""
    key = (config, size, who)
    if key not in _FEATURES:
        img = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            out = model.forward_image(img)
            _FEATURES[key] = (out, model._prepare_backbone_features(out))
    return _FEATURES[key]


def _features(model: torch.nn.Module, config: str, size: int, who: str, n: int = 3):
    """Flattened features (feats, pos, sizes) of the cached frames, batch = frames."""
    return _backbone(model, config, size, who, n)[1][1:]


def _frame(feats_pos_sizes, i: int):
    """Per-frame view (batch of 1) of cached features, as the predictor's ``_get_image_feature``;
    frame ``i`` reuses image ``i % n``."""
    feats, pos, sizes = feats_pos_sizes
    i = i % feats[0].size(1)
    return [f[:, i : i + 1] for f in feats], [p[:, i : i + 1] for p in pos], sizes


def _clicks(*xy_label: tuple[float, float, int]) -> dict[str, torch.Tensor]:
    coords = torch.tensor([[[x, y] for x, y, _ in xy_label]], dtype=torch.float32)
    labels = torch.tensor([[lab for _, _, lab in xy_label]], dtype=torch.int32)
    return {"point_coords": coords, "point_labels": labels}


def _tracking_pair(paired_models, config: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Copies of the paired networks with the object-score shift applied (same weights)."""
    if config not in _TRACKING_PAIRS:
        ref, ours = (copy.deepcopy(m) for m in paired_models(config, SIZE))
        with torch.no_grad():
            ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += OBJ_SCORE_SHIFT[config]
        ours.load_state_dict(ref.state_dict(), strict=True)
        _TRACKING_PAIRS[config] = (ref, ours)
    return _TRACKING_PAIRS[config]


class _Tracker:
    """Drives ``track_step`` like the video predictor: one object, memories stored as bfloat16."""

    def __init__(self, model: torch.nn.Module, feats, num_frames: int) -> None:
        self.model, self.feats, self.num_frames = model, feats, num_frames
        self.bank: dict[str, dict[int, dict]] = {
            "cond_frame_outputs": {},
            "non_cond_frame_outputs": {},
        }
        self.scores: list[float] = []  # object-score logits of the frames so far

    def step(
        self, t: int, cond: bool, init: bool = False, reverse: bool = False, **prompts: Any
    ) -> dict:
        f, p, s = _frame(self.feats, t)
        with torch.no_grad():
            out = self.model.track_step(
                t, init, f, p, s, prompts.get("points"), prompts.get("mask"), self.bank,
                self.num_frames, track_in_reverse=reverse, run_mem_encoder=True,
                prev_sam_mask_logits=prompts.get("prev"),
            )
        self.scores.append(out["object_score_logits"].item())
        stored = dict(out, maskmem_features=out["maskmem_features"].to(torch.bfloat16))
        self.bank["non_cond_frame_outputs"].pop(t, None)
        self.bank["cond_frame_outputs" if cond else "non_cond_frame_outputs"][t] = stored
        return out


# --------------------------------------------------------------------------- structure


def test_constructor_matches_reference() -> None:
    ref = inspect.signature(ref_base.SAM2Base.__init__).parameters
    ours = inspect.signature(SAM2Base.__init__).parameters
    for name, param in ref.items():
        assert name in ours, name
        assert ours[name].default == param.default, name
    assert set(ours) - set(ref) == {"fill_hole_area"}  # the video predictor's extra kwarg
    assert NO_OBJ_SCORE == ref_base.NO_OBJ_SCORE


def test_compile_flag_and_video_kwargs() -> None:
    """``compile_image_encoder`` wraps forward lazily (compiled at the first call, as the
    reference); ``fill_hole_area`` is accepted and stored for the video predictor."""
    from napari_sam2.models.build import build_model

    model = build_model(
        "sam2.1_hiera_t", overrides={"compile_image_encoder": True}, video=True, device="meta"
    )
    assert "forward" in vars(model.image_encoder)  # instance-level compiled wrapper
    assert model.fill_hole_area == 8 and model.binarize_mask_from_pts_for_mem_enc
    with pytest.raises(NotImplementedError):
        model(None)


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_and_image_features(paired_models, config: str) -> None:
    ref, ours = paired_models(config, SIZE)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    for attr in ("hidden_dim", "mem_dim", "num_feature_levels", "sam_image_embedding_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    (out_r, prep_r), (out_o, prep_o) = (
        _backbone(ref, config, SIZE, "ref"), _backbone(ours, config, SIZE, "ours")
    )
    _check("forward_image", out_r, out_o)
    _check("_prepare_backbone_features", prep_r, prep_o)


def test_image_size_512(paired_models) -> None:
    ref, ours = paired_models("sam2.1_hiera_t", 512)
    fr, fo = _features(ref, "t", 512, "ref", n=1), _features(ours, "t", 512, "ours", n=1)
    _check("512 features", fr, fo)
    tr, to = _Tracker(ref, fr, 2), _Tracker(ours, fo, 2)
    click = _clicks((300.0, 200.0, 1))
    _check("512 init frame", tr.step(0, True, init=True, points=click),
           to.step(0, True, init=True, points=click))
    _check("512 tracked frame", tr.step(1, False), to.step(1, False))


# --------------------------------------------------------------------------- SAM heads


HEAD_CASES = {
    "one click, multimask": (dict(points=_clicks((100.0, 120.0, 1))), True),
    "two clicks, single mask": (dict(points=_clicks((100.0, 120.0, 1), (30.0, 200.0, 0))), False),
    "box": (dict(points=_clicks((40.0, 50.0, 2), (180.0, 160.0, 3))), False),
    "box, multimask": (dict(points=_clicks((40.0, 50.0, 2), (180.0, 160.0, 3))), True),
    "low-res mask logits + click": (dict(points=_clicks((90.0, 90.0, 1)), mask="low"), False),
    "full-size mask only": (dict(mask="full"), True),
}


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_forward_sam_heads(paired_models, case: str) -> None:
    ref, ours = paired_models("sam2.1_hiera_t", SIZE)
    kwargs, multimask = HEAD_CASES[case]
    feats, _, sizes = _frame(_features(ours, "sam2.1_hiera_t", SIZE, "ours"), 0)
    pix = feats[-1].permute(1, 2, 0).view(1, 256, *sizes[-1])  # hw×1×C -> 1×C×h×w
    high_res = [x.permute(1, 2, 0).view(1, x.size(2), *s) for x, s in zip(feats[:-1], sizes[:-1])]
    g = torch.Generator().manual_seed(3)
    mask = {
        "low": torch.randn(1, 1, SIZE // 4, SIZE // 4, generator=g) * 8,
        "full": (torch.rand(1, 1, SIZE, SIZE, generator=g) > 0.7).float(),
        None: None,
    }[kwargs.get("mask")]
    args = dict(backbone_features=pix, point_inputs=kwargs.get("points"), mask_inputs=mask,
                high_res_features=high_res, multimask_output=multimask)
    with torch.no_grad():
        out_r, out_o = ref._forward_sam_heads(**args), ours._forward_sam_heads(**args)
    assert len(out_o) == 7 and out_o.obj_ptr.shape == (1, 256)
    _check(f"_forward_sam_heads[{case}]", tuple(out_r), tuple(out_o))


def test_use_mask_as_output(paired_models) -> None:
    ref, ours = paired_models("sam2.1_hiera_t", SIZE)
    feats, _, sizes = _features(ours, "sam2.1_hiera_t", SIZE, "ours")
    pix = feats[-1].permute(1, 2, 0).reshape(3, 256, *sizes[-1])[:2]  # 2 objects
    high_res = [
        x.permute(1, 2, 0).reshape(3, x.size(2), *s)[:2] for x, s in zip(feats[:-1], sizes[:-1])
    ]
    mask = torch.zeros(2, 1, SIZE, SIZE, dtype=torch.bool)
    mask[0, :, 60:150, 40:120] = True  # the second object's mask is empty
    with torch.no_grad():
        out_r = ref._use_mask_as_output(pix, high_res, mask)
        out_o = ours._use_mask_as_output(pix, high_res, mask)
    assert out_o.object_score_logits.flatten().tolist() == [10.0, -10.0]
    _check("_use_mask_as_output", tuple(out_r), tuple(out_o))


# --------------------------------------------------------------------------- video tracking


@pytest.mark.parametrize("config", CONFIGS)
def test_track_step_sequence(paired_models, config: str) -> None:
    """Click on frame 0, track 1..5, correct frame 3 with a click, track 4..5 again."""
    ref, ours = _tracking_pair(paired_models, config)
    tr = _Tracker(ref, _features(ref, config, SIZE, "ref"), 6)
    to = _Tracker(ours, _features(ours, config, SIZE, "ours"), 6)
    click = _clicks((120.0, 100.0, 1))
    _check("frame 0 (clicks)", tr.step(0, True, init=True, points=click),
           to.step(0, True, init=True, points=click))
    for t in range(1, 6):
        _check(f"frame {t}", tr.step(t, False), to.step(t, False))
    fix = _clicks((60.0, 180.0, 0))
    prev_r = tr.bank["non_cond_frame_outputs"][3]["pred_masks"].clamp(-32, 32)
    prev_o = to.bank["non_cond_frame_outputs"][3]["pred_masks"].clamp(-32, 32)
    _check("frame 3 (correction click)", tr.step(3, True, points=fix, prev=prev_r),
           to.step(3, True, points=fix, prev=prev_o))
    for t in (4, 5):
        _check(f"frame {t} (two cond frames)", tr.step(t, False), to.step(t, False))
    assert min(to.scores) < 0 < max(to.scores), "object should be absent on some frames only"


@pytest.mark.parametrize("config", CONFIGS)
def test_track_in_reverse(paired_models, config: str) -> None:
    """Mask prompt on frame 5, then track 4..1 backwards."""
    ref, ours = _tracking_pair(paired_models, config)
    tr = _Tracker(ref, _features(ref, config, SIZE, "ref"), 6)
    to = _Tracker(ours, _features(ours, config, SIZE, "ours"), 6)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 80:200, 50:170] = 1.0
    _check("frame 5 (mask prompt)", tr.step(5, True, init=True, mask=mask),
           to.step(5, True, init=True, mask=mask))
    for t in (4, 3, 2, 1):
        _check(f"frame {t} (reverse)", tr.step(t, False, reverse=True),
               to.step(t, False, reverse=True))


def test_memory_selection_rules(paired_models) -> None:
    """Memory stride, limited conditioning frames and unselected cond frames as memories."""
    ref, ours = paired_models("sam2.1_hiera_t", SIZE)
    f, p, s = _frame(_features(ours, "sam2.1_hiera_t", SIZE, "ours"), 1)
    g = torch.Generator().manual_seed(5)
    pos = [torch.randn(1, 64, 16, 16, generator=g)]

    def frame_out() -> dict:
        return {"maskmem_features": torch.randn(1, 64, 16, 16, generator=g).to(torch.bfloat16),
                "maskmem_pos_enc": pos, "obj_ptr": torch.randn(1, 256, generator=g)}

    bank = {"cond_frame_outputs": {t: frame_out() for t in (0, 6, 9, 17)},
            "non_cond_frame_outputs": {t: frame_out() for t in range(1, 20) if t not in (6, 9, 17)}}
    saved = [(m.memory_temporal_stride_for_eval, m.max_cond_frames_in_attn) for m in (ref, ours)]
    try:
        for m in (ref, ours):
            m.memory_temporal_stride_for_eval, m.max_cond_frames_in_attn = 3, 2
        for t, reverse in ((12, False), (14, True), (18, False)):
            args = (t, False, f[-1:], p[-1:], s[-1:], bank, 20, reverse)
            with torch.no_grad():
                _check(f"memory at frame {t}, reverse={reverse}",
                       ref._prepare_memory_conditioned_features(*args),
                       ours._prepare_memory_conditioned_features(*args))
    finally:
        for m, (stride, max_cond) in zip((ref, ours), saved):
            m.memory_temporal_stride_for_eval, m.max_cond_frames_in_attn = stride, max_cond


@pytest.mark.parametrize("frame_idx, limit", [(5, 2), (5, 3), (0, 2), (30, 2), (9, -1)])
def test_select_closest_cond_frames(frame_idx: int, limit: int) -> None:
    cond = {t: f"out{t}" for t in (8, 0, 3, 12, 20)}
    expected = ref_utils.select_closest_cond_frames(frame_idx, cond, limit)
    assert select_closest_cond_frames(frame_idx, cond, limit) == expected


# --------------------------------------------------------------------------- where we deviate


def test_bfloat16_memory_without_object_pointers(paired_models) -> None:
    """Reverse tracking from past an object's only prompted frame: no pointer enters the memory,
    which then holds only bfloat16 memories. The reference fails with a dtype clash in fp32;
    ours computes in fp32 and equals the reference fed float32 copies of the same memories."""
    ref, ours = paired_models("sam2.1_hiera_t", SIZE)
    tr = _Tracker(ref, _features(ref, "sam2.1_hiera_t", SIZE, "ref"), 6)
    to = _Tracker(ours, _features(ours, "sam2.1_hiera_t", SIZE, "ours"), 6)
    click = _clicks((120.0, 100.0, 1))
    tr.step(0, True, init=True, points=click)
    to.step(0, True, init=True, points=click)
    with pytest.raises(RuntimeError, match="dtype"):
        tr.step(5, False, reverse=True)
    out = to.step(5, False, reverse=True)
    assert out["pred_masks"].shape == (1, 1, SIZE // 4, SIZE // 4)
    assert out["maskmem_features"].shape == (1, 64, SIZE // 16, SIZE // 16)
    assert all(torch.isfinite(out[k]).all() for k in ("pred_masks", "obj_ptr", "maskmem_features"))
    cond = tr.bank["cond_frame_outputs"][0]
    cond["maskmem_features"] = cond["maskmem_features"].float()
    _check("reverse frame 5 vs reference on float32 memory", tr.step(5, False, reverse=True), out)


def test_single_frame_video_correction_is_finite(paired_models) -> None:
    """A click on an already tracked frame of a 1-frame video: the reference divides the pointer
    distance by zero (NaN object score, mask dropped to NO_OBJ_SCORE); ours stays finite."""
    ref, ours = paired_models("sam2.1_hiera_t", SIZE)
    tr = _Tracker(ref, _features(ref, "sam2.1_hiera_t", SIZE, "ref"), 1)
    to = _Tracker(ours, _features(ours, "sam2.1_hiera_t", SIZE, "ours"), 1)
    click = _clicks((120.0, 100.0, 1))
    tr.step(0, True, init=True, points=click)
    to.step(0, True, init=True, points=click)
    click2 = _clicks((120.0, 100.0, 1), (40.0, 40.0, 0))
    assert tr.step(0, True, points=click2)["object_score_logits"].isnan().all()
    out = to.step(0, True, points=click2)
    assert all(torch.isfinite(v).all() for v in out.values() if isinstance(v, torch.Tensor))


def test_fill_holes_in_mask_scores() -> None:
    mask = torch.full((2, 1, 12, 12), 5.0)
    mask[0, 0, 2:4, 2:4] = -1.0  # enclosed hole, 4 px -> filled
    mask[0, 0, 6:11, 6:11] = -1.0  # enclosed hole, 25 px -> kept
    mask[0, 0, 0, 11] = -3.0  # 1 px background touching the border -> filled
    mask[1, 0, 4, 4] = mask[1, 0, 5, 5] = -2.0  # diagonal pixels: one 8-connected 2 px region
    mask[1, 0, :, 8:] = -4.0  # large background -> kept
    out = fill_holes_in_mask_scores(mask, max_area=8)
    expected = mask.clone()
    expected[0, 0, 2:4, 2:4] = 0.1
    expected[0, 0, 0, 11] = 0.1
    expected[1, 0, 4, 4] = expected[1, 0, 5, 5] = 0.1
    assert torch.equal(out, expected) and out.dtype == mask.dtype
