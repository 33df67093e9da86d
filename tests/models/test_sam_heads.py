"""Parity of the SAM heads (prompt encoder, two-way transformer, mask decoder) with sam2==1.1.0."""

from __future__ import annotations

import pytest
import sam2.modeling.sam.mask_decoder as ref_md
import sam2.modeling.sam.prompt_encoder as ref_pe
import sam2.modeling.sam.transformer as ref_tf
import torch
from torch import nn

from napari_sam2.models.mask_decoder import MaskDecoder
from napari_sam2.models.prompt_encoder import PromptEncoder
from napari_sam2.models.transformer import TwoWayTransformer

TOL = 1e-4
C = 256


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    diff = _max_diff(a, b)
    assert diff <= TOL, f"max abs diff {diff:.3g} > {TOL}"


def _pair(ref: nn.Module, ours: nn.Module, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Perturb 1-D params (biases, norms) of ``ref`` away from their init, copy into ``ours``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _state_shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


# --------------------------------------------------------------------------- prompt encoder


def _prompt_encoders(image_size: int) -> tuple[nn.Module, nn.Module]:
    kw = dict(
        embed_dim=C,
        image_embedding_size=(image_size // 16, image_size // 16),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    torch.manual_seed(1)
    return _pair(ref_pe.PromptEncoder(**kw), PromptEncoder(**kw))


@pytest.mark.parametrize("image_size", [1024, 256, 512])
def test_prompt_encoder_parity(image_size: int) -> None:
    ref, ours = _prompt_encoders(image_size)
    assert _state_shapes(ref) == _state_shapes(ours)
    assert ours.mask_input_size == ref.mask_input_size
    g = torch.Generator().manual_seed(2)
    b, n = 3, 5
    coords = torch.rand(b, n, 2, generator=g) * image_size
    labels = torch.tensor(
        [[1, 0, -1, 2, 3], [1, 1, 0, 0, -1], [4, 1, -1, -1, 0]], dtype=torch.int32
    )  # includes padding, box corners and an unknown label (bare PE)
    x0y0 = torch.rand(b, 2, generator=g) * image_size / 2
    boxes = torch.cat([x0y0, x0y0 + image_size / 3], dim=1)  # B×4
    h = image_size // 4
    masks = torch.randn(b, 1, h, h, generator=g) * 5

    cases = {
        "points": ((coords, labels), None, None),
        "box": (None, boxes, None),
        "points+box": ((coords, labels), boxes, None),
        "mask": (None, None, masks),
        "points+mask": ((coords, labels), None, masks),
        "nothing": (None, None, None),
    }
    with torch.no_grad():
        _assert_close(ours.get_dense_pe(), ref.get_dense_pe())
        for name, args in cases.items():
            rs, rd = ref(*args)
            os_, od = ours(*args)
            assert os_.shape == rs.shape, name
            _assert_close(os_, rs)
            _assert_close(od, rd)
        # Labels given as floats (the reference promotes them when padding) work too.
        rs, _ = ref((coords, labels.float()), None, None)
        os_, _ = ours((coords, labels.float()), None, None)
        _assert_close(os_, rs)


# --------------------------------------------------------------------------- transformer


def _transformers() -> tuple[nn.Module, nn.Module]:
    kw = dict(depth=2, embedding_dim=C, mlp_dim=2048, num_heads=8)
    torch.manual_seed(3)
    return _pair(ref_tf.TwoWayTransformer(**kw), TwoWayTransformer(**kw))


def test_two_way_transformer_parity() -> None:
    ref, ours = _transformers()
    assert _state_shapes(ref) == _state_shapes(ours)
    g = torch.Generator().manual_seed(4)
    img = torch.randn(2, C, 32, 32, generator=g)
    pe = torch.randn(2, C, 32, 32, generator=g)
    tokens = torch.randn(2, 9, C, generator=g)
    with torch.no_grad():
        rq, rk = ref(img, pe, tokens)
        oq, ok = ours(img, pe, tokens)
    _assert_close(oq, rq)
    _assert_close(ok, rk)


# --------------------------------------------------------------------------- mask decoder

SAM21_FLAGS = dict(
    use_high_res_features=True,
    iou_prediction_use_sigmoid=True,
    pred_obj_scores=True,
    pred_obj_scores_mlp=True,
    use_multimask_token_for_obj_ptr=True,
)
VARIANTS = {
    "sam2.1": SAM21_FLAGS,
    "sam2.1+dynamic": {**SAM21_FLAGS, "dynamic_multimask_via_stability": True},
    "linear_obj_head": {**SAM21_FLAGS, "pred_obj_scores_mlp": False},
    "defaults": {},
    "no_obj_scores_lowres": dict(iou_prediction_use_sigmoid=True, use_high_res_features=False),
}


def _decoders(flags: dict) -> tuple[nn.Module, nn.Module]:
    def build(md_cls, tf_cls) -> nn.Module:
        return md_cls(
            num_multimask_outputs=3,
            transformer=tf_cls(depth=2, embedding_dim=C, mlp_dim=2048, num_heads=8),
            transformer_dim=C,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            **flags,
        )

    torch.manual_seed(5)
    return _pair(
        build(ref_md.MaskDecoder, ref_tf.TwoWayTransformer),
        build(MaskDecoder, TwoWayTransformer),
    )


def _decoder_inputs(ref: nn.Module, b: int, repeat_image: bool, seed: int = 6):
    """Inputs for a 256-px image: 16×16 embeddings, 64×64 and 32×32 high-res levels."""
    g = torch.Generator().manual_seed(seed)
    nb = 1 if repeat_image else b
    img = torch.randn(nb, C, 16, 16, generator=g)
    pe = torch.randn(1, C, 16, 16, generator=g)
    sparse = torch.randn(b, 3, C, generator=g)
    dense = torch.randn(b, C, 16, 16, generator=g)
    hr = None
    if ref.use_high_res_features:
        s0 = torch.randn(nb, C, 64, 64, generator=g)
        s1 = torch.randn(nb, C, 32, 32, generator=g)
        with torch.no_grad():
            hr = [ref.conv_s0(s0), ref.conv_s1(s1)]  # B×32×64×64, B×64×32×32
        if repeat_image:
            hr = [f.repeat_interleave(b, dim=0) for f in hr]
    return img, pe, sparse, dense, hr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mask_decoder_keys(variant: str) -> None:
    ref, ours = _decoders(VARIANTS[variant])
    assert _state_shapes(ref) == _state_shapes(ours)
    assert list(ref.state_dict()) == list(ours.state_dict())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("repeat_image", [False, True])
def test_mask_decoder_parity(variant: str, repeat_image: bool) -> None:
    ref, ours = _decoders(VARIANTS[variant])
    img, pe, sparse, dense, hr = _decoder_inputs(ref, b=2, repeat_image=repeat_image)
    for multimask in (False, True):
        args = (img, pe, sparse, dense, multimask, repeat_image, hr)
        with torch.no_grad():
            r = ref(*args)
            o = ours(*args)
        assert len(o) == 4
        n_masks = 3 if multimask else 1
        assert o[0].shape == (2, n_masks, 64, 64)
        for ro, oo in zip(r, o):
            _assert_close(oo, ro)


def test_prompt_encoder_to_decoder_end_to_end() -> None:
    """Points through both prompt encoders feed both decoders (256-px input)."""
    pref, pours = _prompt_encoders(256)
    ref, ours = _decoders(VARIANTS["sam2.1+dynamic"])
    _, _, _, _, hr = _decoder_inputs(ref, b=2, repeat_image=False)
    img = torch.randn(2, C, 16, 16, generator=torch.Generator().manual_seed(7))
    coords = torch.tensor([[[40.0, 50.0], [100.0, 120.0]], [[10.0, 200.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]], dtype=torch.int32)
    with torch.no_grad():
        outs = []
        for pe_mod, dec in ((pref, ref), (pours, ours)):
            sparse, dense = pe_mod((coords, labels), None, None)
            outs.append(dec(img, pe_mod.get_dense_pe(), sparse, dense, False, False, hr))
    for ro, oo in zip(*outs):
        _assert_close(oo, ro)


def test_dynamic_multimask_selection() -> None:
    """Both stable (keep token 0) and unstable (fall back to best multimask) rows."""
    ref, ours = _decoders(VARIANTS["sam2.1+dynamic"])
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(4, 4, 32, 32, generator=g)
    logits[0, 0] = 20.0 * logits[0, 0].sign()  # stable: nothing near 0
    logits[1, 0] = 0.01 * logits[1, 0]  # unstable: everything within ±delta
    logits[2, 0] = -5.0  # empty mask: stability 1 by definition
    scores = torch.rand(4, 4, generator=g)
    r_m, r_s = ref._dynamic_multimask_via_stability(logits, scores)
    o_m, o_s = ours._dynamic_multimask_via_stability(logits, scores)
    assert torch.equal(o_m, r_m) and torch.equal(o_s, r_s)
    assert torch.equal(o_m[0], logits[0, 0:1]) and torch.equal(o_m[2], logits[2, 0:1])
    best = scores[1, 1:].argmax() + 1
    assert torch.equal(o_m[1], logits[1, best : best + 1])
    assert torch.equal(ours._get_stability_scores(logits), ref._get_stability_scores(logits))

    # In training mode the single-mask token is always used.
    ours.train()
    img, pe, sparse, dense, hr = _decoder_inputs(ref, b=2, repeat_image=False)
    with torch.no_grad():
        m, iou, _, _ = ours(img, pe, sparse, dense, False, False, hr)
        all_m, all_iou, _, _ = ours.predict_masks(img, pe, sparse, dense, False, hr)
    assert torch.equal(m, all_m[:, :1]) and torch.equal(iou, all_iou[:, :1])
