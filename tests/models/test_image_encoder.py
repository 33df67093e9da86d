"""Equivalence tests of the Hiera trunk and FPN image encoder against the reference ``sam2``."""

from __future__ import annotations

from typing import Any

import pytest
import sam2.modeling.backbones.hieradet as ref_hieradet
import sam2.modeling.backbones.image_encoder as ref_image_encoder
import sam2.modeling.backbones.utils as ref_utils
import sam2.modeling.position_encoding as ref_position_encoding
import torch

from napari_sam2.models.hiera import Hiera, window_partition, window_unpartition
from napari_sam2.models.image_encoder import FpnNeck, ImageEncoder
from napari_sam2.models.position_encoding import PositionEmbeddingSine

TOL = 1e-4

# Trunk settings and neck channels of the SAM 2.1 configs (configs/sam2.1/sam2.1_hiera_*.yaml).
CONFIGS: dict[str, tuple[dict[str, Any], list[int]]] = {
    "tiny": (
        dict(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9],
             window_pos_embed_bkg_spatial_size=[7, 7]),
        [768, 384, 192, 96],
    ),
    "small": (
        dict(embed_dim=96, num_heads=1, stages=[1, 2, 11, 2], global_att_blocks=[7, 10, 13],
             window_pos_embed_bkg_spatial_size=[7, 7]),
        [768, 384, 192, 96],
    ),
    "base_plus": (dict(embed_dim=112, num_heads=2), [896, 448, 224, 112]),
    "large": (
        dict(embed_dim=144, num_heads=2, stages=[2, 6, 36, 4], global_att_blocks=[23, 33, 43],
             window_pos_embed_bkg_spatial_size=[7, 7], window_spec=[8, 4, 16, 8]),
        [1152, 576, 288, 144],
    ),
}
NECK = dict(d_model=256, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")

_PAIRS: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One intra-op thread: on a small shared CPU this is several times faster than two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    _PAIRS.clear()


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter non-trivial values (the default init leaves zeros and ones)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("pos_embed") or name.endswith("pos_embed_window"):
                p.copy_(0.5 * noise)
            elif p.ndim == 1:
                p.add_(0.1 * noise)


def _build_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Reference and our ``ImageEncoder`` for a named config, with identical weights (cached)."""
    if name not in _PAIRS:
        trunk_kw, channels = CONFIGS[name]
        torch.manual_seed(0)
        with torch.no_grad():
            ref = ref_image_encoder.ImageEncoder(
                trunk=ref_hieradet.Hiera(**trunk_kw),
                neck=ref_image_encoder.FpnNeck(
                    position_encoding=ref_position_encoding.PositionEmbeddingSine(256),
                    backbone_channel_list=channels,
                    **NECK,
                ),
                scalp=1,
            )
            ours = ImageEncoder(
                trunk=Hiera(**trunk_kw),
                neck=FpnNeck(
                    position_encoding=PositionEmbeddingSine(num_pos_feats=256),
                    backbone_channel_list=channels,
                    **NECK,
                ),
                scalp=1,
            )
        _perturb(ref, seed=1)
        ours.load_state_dict(ref.state_dict(), strict=True)
        _PAIRS[name] = (ref.eval(), ours.eval())
    return _PAIRS[name]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _run_with_trunk(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
    """Run an image encoder once, also capturing its trunk's outputs."""
    captured: list[list[torch.Tensor]] = []
    handle = encoder.trunk.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            out = encoder(x)
    finally:
        handle.remove()
    return out, captured[0]


def compare_encoders(name: str, size: int, seed: int = 0) -> dict[str, float]:
    """Max abs differences between reference and ours on a random ``1×3×size×size`` image."""
    ref, ours = _build_pair(name)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    ref_out, ref_trunk = _run_with_trunk(ref, x)
    our_out, our_trunk = _run_with_trunk(ours, x)
    assert set(our_out) == {"vision_features", "vision_pos_enc", "backbone_fpn"}
    diffs: dict[str, float] = {}
    assert len(our_trunk) == len(ref_trunk) == 4
    for i, (a, b) in enumerate(zip(ref_trunk, our_trunk)):
        diffs[f"trunk{i}"] = _max_diff(a, b)
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert isinstance(our_out[key], list)
        assert len(our_out[key]) == len(ref_out[key]) == 3
        for i, (a, b) in enumerate(zip(ref_out[key], our_out[key])):
            diffs[f"{key}{i}"] = _max_diff(a, b)
    diffs["vision_features"] = _max_diff(ref_out["vision_features"], our_out["vision_features"])
    assert our_out["vision_features"].shape == (1, 256, size // 16, size // 16)
    return diffs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_and_shapes(name: str) -> None:
    ref, ours = _build_pair(name)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert ours.trunk.channel_list == ref.trunk.channel_list == CONFIGS[name][1]
    assert ours.trunk.stage_ends == ref.trunk.stage_ends
    assert ours.trunk.q_pool_blocks == ref.trunk.q_pool_blocks
    for rb, ob in zip(ref.trunk.blocks, ours.trunk.blocks):
        assert (ob.window_size, ob.dim, ob.dim_out, ob.attn.num_heads) == (
            rb.window_size, rb.dim, rb.dim_out, rb.attn.num_heads)


@pytest.mark.parametrize(
    "name,size",
    [("tiny", 256), ("tiny", 512), ("small", 256), ("small", 512), ("base_plus", 256),
     ("large", 256)],
)
def test_encoder_matches_reference(name: str, size: int) -> None:
    diffs = compare_encoders(name, size)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, f"{worst}: {diffs[worst]:.3g} ({diffs})"


def test_pos_embed_cache_reused_and_invalidated() -> None:
    trunk = Hiera(**CONFIGS["tiny"][0]).eval()
    _perturb(trunk, seed=2)
    calls = []
    compute = trunk._compute_pos_embed
    trunk._compute_pos_embed = (  # type: ignore[method-assign]
        lambda hw: calls.append(hw) or compute(hw)
    )
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        first = trunk(x)
        cached = trunk.get_pos_embed((64, 64))
        second = trunk(x)
        assert trunk.get_pos_embed((64, 64)) is cached
        assert calls == [(64, 64)]
        assert cached.shape == (1, 64, 64, 96)
        for a, b in zip(first, second):
            assert torch.equal(a, b)
        other = trunk.get_pos_embed((128, 128))  # another size: one more entry
        assert calls == [(64, 64), (128, 128)]
        assert trunk.get_pos_embed((64, 64)) is cached and trunk.get_pos_embed((128, 128)) is other
        # The reference's (uncached) computation, run on our parameters.
        assert _max_diff(cached, ref_hieradet.Hiera._get_pos_embed(trunk, (64, 64))) <= 1e-6

        # New weights (load_state_dict or in-place edits) must not be served from a stale cache.
        trunk.load_state_dict({k: v + 1 for k, v in trunk.state_dict().items()})
        fresh = trunk.get_pos_embed((64, 64))
        assert fresh is not cached and len(calls) == 3
        assert _max_diff(fresh, ref_hieradet.Hiera._get_pos_embed(trunk, (64, 64))) <= 1e-6
        trunk.pos_embed_window.mul_(2)
        assert trunk.get_pos_embed((64, 64)) is not fresh and len(calls) == 4


def test_pos_embed_not_cached_when_training_grads() -> None:
    trunk = Hiera(**CONFIGS["tiny"][0])
    pos = trunk.get_pos_embed((64, 64))
    assert pos.requires_grad and not trunk._pos_cache
    pos.sum().backward()
    assert trunk.pos_embed.grad is not None and trunk.pos_embed_window.grad is not None


@pytest.mark.parametrize("hw,ws", [((16, 16), 8), ((14, 20), 8), ((7, 7), 14), ((16, 16), 16)])
def test_window_partition_roundtrip(hw: tuple[int, int], ws: int) -> None:
    x = torch.randn(2, *hw, 5)
    ours, pad = window_partition(x, ws)
    ref, ref_pad = ref_utils.window_partition(x, ws)
    assert pad == ref_pad and torch.equal(ours, ref)
    back = window_unpartition(ours, ws, pad, hw)
    assert torch.equal(back, x)
    assert torch.equal(back, ref_utils.window_unpartition(ref, ws, ref_pad, hw))


@pytest.mark.parametrize("interm,size", [(False, 256), (True, 320)])
def test_small_custom_trunk_matches_reference(interm: bool, size: int) -> None:
    """Narrow trunk; at 320 px the later stages need padded windows (20 px grid, window 14)."""
    kw = dict(embed_dim=32, num_heads=2, stages=[1, 2, 2, 2], global_att_blocks=[4],
              window_spec=[8, 4, 14, 7], return_interm_layers=interm)
    torch.manual_seed(0)
    ref, ours = ref_hieradet.Hiera(**kw).eval(), Hiera(**kw).eval()
    _perturb(ref, seed=4)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.channel_list == ref.channel_list
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert len(a) == len(b) == (4 if interm else 1)
    for ra, ob in zip(a, b):
        assert _max_diff(ra, ob) <= TOL


@pytest.mark.parametrize(
    "interp,fuse,levels", [("bilinear", "avg", None), ("nearest", "sum", [1, 2, 3])]
)
def test_neck_variants_match_reference(interp: str, fuse: str, levels: list[int] | None) -> None:
    channels = [64, 32, 16, 8]
    kw = dict(d_model=32, backbone_channel_list=channels, fpn_interp_model=interp, fuse_type=fuse,
              fpn_top_down_levels=levels)
    torch.manual_seed(0)
    ref = ref_image_encoder.FpnNeck(ref_position_encoding.PositionEmbeddingSine(32), **kw).eval()
    ours = FpnNeck(PositionEmbeddingSine(32), **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    xs = [torch.randn(2, c, 32 >> i, 32 >> i) for i, c in enumerate(channels[::-1])]
    with torch.no_grad():
        (rf, rp), (of, op) = ref(xs), ours(xs)
    for a, b in zip(rf + rp, of + op):
        assert _max_diff(a, b) <= TOL


def test_channel_mismatch_raises() -> None:
    neck = FpnNeck(PositionEmbeddingSine(256), d_model=256, backbone_channel_list=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="do not match"):
        ImageEncoder(Hiera(**CONFIGS["tiny"][0]), neck)
