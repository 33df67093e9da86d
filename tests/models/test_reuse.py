"""Work done once and reused: bfloat16 weight copies, the first memory-attention layer's
self-attention per frame, and the mask decoder's first-block image projections per image.
Each reuse must give exactly what recomputing gives, and stop when its inputs change."""

from __future__ import annotations

import pytest
import torch

from napari_sam2.models.build import build_model
from napari_sam2.models.precision import set_precision


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_t", image_size=256, video=True, precision="fp32")


# ---------------------------------------------------------------------- bfloat16 weights
def test_bf16_weights_are_cast_once_and_put_back(model):
    set_precision(model, "bf16")
    try:
        linear = model.image_encoder.trunk.blocks[0].attn.qkv
        seen = []
        handle = linear.register_forward_pre_hook(lambda m, a: seen.append(m.weight.dtype))
        x = torch.randn(1, 3, 256, 256)
        with torch.inference_mode():
            first = model.image_encoder(x)["vision_features"]
            model.image_encoder(x)
        handle.remove()
        assert seen == [torch.bfloat16, torch.bfloat16]  # already cast when the layer runs
        assert isinstance(linear.weight, torch.nn.Parameter)  # the float32 one is back
        assert linear.weight.dtype == torch.float32
        # New float32 weights are seen: the copies are remade.
        with torch.no_grad():
            linear.weight.mul_(2.0)
        with torch.inference_mode():
            second = model.image_encoder(x)["vision_features"]
        assert not torch.equal(first, second)
        with torch.no_grad():
            linear.weight.div_(2.0)
        with torch.inference_mode():
            assert torch.equal(model.image_encoder(x)["vision_features"], first)
    finally:
        set_precision(model, "fp32")


def test_bf16_with_gradients_keeps_training_the_float32_weights(model):
    set_precision(model, "bf16")
    try:
        out = model.image_encoder(torch.randn(1, 3, 256, 256))["vision_features"]
        out.float().square().mean().backward()
        grad = model.image_encoder.trunk.blocks[0].attn.qkv.weight.grad
        assert grad is not None and grad.dtype == torch.float32 and grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        set_precision(model, "fp32")


# ---------------------------------------------------------------------- memory attention
def _memory_inputs(batch: int = 1):
    gen = torch.Generator().manual_seed(1)
    curr = torch.randn(256, 1, 256, generator=gen)
    pos = torch.randn(256, 1, 256, generator=gen)
    memory = torch.randn(2 * 256 + 4, batch, 64, generator=gen)
    memory_pos = torch.randn(2 * 256 + 4, batch, 64, generator=gen)
    return curr.expand(-1, batch, -1), pos.expand(-1, batch, -1), memory, memory_pos


def _attend(attn, curr, pos, memory, memory_pos):
    return attn(curr=curr, curr_pos=pos, memory=memory, memory_pos=memory_pos,
                num_obj_ptr_tokens=4)


def test_a_frames_objects_share_the_first_self_attention(model):
    attn = model.memory_attention
    curr, pos, memory, memory_pos = _memory_inputs()
    calls = []
    first = attn.layers[0]
    handle = first.self_attn.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode():
            a = _attend(attn, curr, pos, memory, memory_pos)
            b = _attend(attn, curr, pos, memory.flip(0), memory_pos)  # another object
            attn._frame_cache = None
            b_fresh = _attend(attn, curr, pos, memory.flip(0), memory_pos)
            c = _attend(attn, curr.clone(), pos, memory, memory_pos)  # another frame
    finally:
        handle.remove()
    assert torch.equal(b, b_fresh) and not torch.equal(a, b)
    assert torch.equal(a, c)
    # Layer 0's self-attention: once for a and b, once after the reset, once for c.
    assert len(calls) == 3


def test_a_broadcast_batch_of_objects_attends_once_and_matches_one_by_one(model):
    attn = model.memory_attention
    curr, pos, memory, memory_pos = _memory_inputs(batch=3)
    with torch.inference_mode():
        attn._frame_cache = None
        together = _attend(attn, curr, pos, memory, memory_pos)
        alone = [
            _attend(attn, curr[:, :1].clone(), pos[:, :1].clone(), memory[:, i : i + 1],
                    memory_pos[:, i : i + 1])
            for i in range(3)
        ]
    torch.testing.assert_close(together, torch.cat(alone, dim=1), rtol=1e-5, atol=1e-5)


def test_new_weights_are_not_served_from_the_cache(model):
    attn = model.memory_attention
    curr, pos, memory, memory_pos = _memory_inputs()
    weight = attn.layers[0].self_attn.q_proj.weight
    with torch.inference_mode():
        before = _attend(attn, curr, pos, memory, memory_pos)
    with torch.no_grad():
        weight.mul_(1.5)
    try:
        with torch.inference_mode():
            after = _attend(attn, curr, pos, memory, memory_pos)
        assert not torch.equal(before, after)
    finally:
        with torch.no_grad():
            weight.div_(1.5)


# ---------------------------------------------------------------------- mask decoder
def _decode(model, image, mask=None, points=None):
    points = points if points is not None else (
        torch.tensor([[[40.0, 60.0]]]), torch.tensor([[1]]))
    sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask)
    high_res = [torch.randn(1, 32, 64, 64, generator=torch.Generator().manual_seed(3)),
                torch.randn(1, 64, 32, 32, generator=torch.Generator().manual_seed(4))]
    return model.sam_mask_decoder(
        image_embeddings=image, image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=True, repeat_image=False, high_res_features=high_res,
    )


def test_clicks_on_one_image_reuse_its_projections_and_match_recomputing(model):
    decoder = model.sam_mask_decoder
    image = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(2))
    first = decoder.transformer.layers[0].cross_attn_token_to_image.k_proj
    calls = []
    handle = first.register_forward_hook(lambda *a: calls.append(1))
    other = (torch.tensor([[[100.0, 30.0]]]), torch.tensor([[1]]))
    try:
        with torch.inference_mode():
            decoder._image_side_cache = None
            _decode(model, image)
            reused = _decode(model, image, points=other)
            decoder._image_side_cache = None
            fresh = _decode(model, image, points=other)
            mask = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(5))
            _decode(model, image, mask=mask)  # a mask prompt changes the image side
            _decode(model, image.clone())  # another image
    finally:
        handle.remove()
    for a, b in zip(reused, fresh):
        assert torch.equal(a, b)
    assert len(calls) == 4  # first click, after the reset, with a mask, another image


def test_decoding_with_gradients_recomputes(model):
    image = torch.randn(1, 256, 16, 16, requires_grad=True)
    masks = _decode(model, image)[0]
    masks.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
