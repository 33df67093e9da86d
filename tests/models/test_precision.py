"""Precision modes (strict / fast float32, opt-in bfloat16) and the CPU attention kernels."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from napari_sam2.models import fast_fp32 as fast
from napari_sam2.models import precision as prec
from napari_sam2.models.attention import RoPEAttention
from napari_sam2.models.attention_kernels import attend_then_project, chunked_attention
from napari_sam2.models.build import build_model


def _flag() -> str | None:
    flags = fast._matmul_flags()
    return getattr(flags, "fp32_precision", None)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_t", image_size=256, precision="fp32")


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 256, 256, generator=gen)
    curr = [torch.randn(256, 2, 256, generator=gen)]
    curr_pos = [torch.randn(256, 2, 256, generator=gen)]
    memory = torch.randn(3 * 256 + 8, 2, 64, generator=gen)
    memory_pos = torch.randn(3 * 256 + 8, 2, 64, generator=gen)
    return image, (curr, curr_pos, memory, memory_pos)


def _run(model, inputs):
    image, (curr, curr_pos, memory, memory_pos) = inputs
    with torch.inference_mode():
        feats = model.image_encoder(image)
        attn = model.memory_attention(
            curr=curr, curr_pos=curr_pos, memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=8
        )
    return feats, attn


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_unknown_precision_is_refused(tiny):
    with pytest.raises(ValueError, match="auto, fp32, fast, bf16"):
        prec.set_precision(tiny, "fp16")
    with pytest.raises(ValueError, match="precision"):
        build_model("sam2.1_hiera_t", image_size=256, device="meta", precision="half")


def test_default_is_auto_and_modes_are_recorded():
    model = build_model("sam2.1_hiera_t", image_size=256, device="meta")
    assert model.precision == "fp32"  # "auto" on a device without bfloat16 support here
    assert "meta" in model.precision_reason
    prec.set_precision(model, "fast")
    assert model.precision == "fast" and model.precision_reason == "chosen explicitly"
    assert len(model._precision_hooks) == 8  # pre + post on four parts
    prec.set_precision(model, "fp32")
    assert model.precision == "fp32" and model._precision_hooks == []


def test_fast_mode_matches_strict_float32(tiny, inputs):
    strict_feats, strict_attn = _run(prec.set_precision(tiny, "fp32"), inputs)
    before = _flag()
    fast_feats, fast_attn = _run(prec.set_precision(tiny, "fast"), inputs)
    assert _flag() == before  # the process-wide switch is put back
    assert fast_attn.dtype == torch.float32
    assert _rel(fast_attn, strict_attn) < 1e-4
    for a, b in zip(fast_feats["backbone_fpn"], strict_feats["backbone_fpn"]):
        assert a.dtype == torch.float32 and _rel(a, b) < 1e-4
    prec.set_precision(tiny, "fp32")


def test_bf16_mode_is_close_and_returns_float32(tiny, inputs):
    strict_feats, strict_attn = _run(prec.set_precision(tiny, "fp32"), inputs)
    bf_feats, bf_attn = _run(prec.set_precision(tiny, "bf16"), inputs)
    prec.set_precision(tiny, "fp32")
    assert bf_attn.dtype == torch.float32
    assert bf_feats["vision_features"].dtype == torch.float32
    err_attn = _rel(bf_attn, strict_attn)
    err_feat = _rel(bf_feats["vision_features"], strict_feats["vision_features"])
    assert 0 < err_attn < 3e-2, err_attn  # really computed in bfloat16, and close
    assert 0 < err_feat < 5e-2, err_feat


def test_switch_restored_when_forward_raises(tiny):
    prec.set_precision(tiny, "fast")
    before = _flag()
    with pytest.raises(Exception):
        tiny.image_encoder(torch.zeros(1, 3, 7))  # wrong rank
    assert _flag() == before
    assert fast._active == 0
    prec.set_precision(tiny, "fp32")


@pytest.mark.skipif(not prec.fast_fp32_available(), reason="CPU without bfloat16-split float32")
def test_scope_is_reentrant_and_shared_between_threads():
    before = _flag()
    inside: list[str | None] = []
    with prec.precision_scope():
        with prec.precision_scope():
            assert _flag() == "bf16"
        assert _flag() == "bf16"  # the inner exit does not switch it off
        worker = threading.Thread(target=lambda: inside.append(_flag()))
        worker.start()
        worker.join()
    assert inside == ["bf16"] and _flag() == before


def test_fast_check_rejects_plain_bfloat16(monkeypatch):
    """On a CPU that would round products to plain bfloat16, ``fast`` means strict."""

    class Flags:
        fp32_precision = "ieee"

    monkeypatch.setattr(fast, "_fast_ok", None)
    monkeypatch.setattr(fast, "_matmul_flags", lambda: Flags)
    assert prec.fast_fp32_available() is True  # exact products pass the check
    monkeypatch.setattr(fast, "_fast_ok", None)
    real_matmul = torch.Tensor.__matmul__

    def lossy(a, b):
        out = real_matmul(a, b)
        return out.bfloat16().float() if Flags.fp32_precision == "bf16" else out

    monkeypatch.setattr(torch.Tensor, "__matmul__", lossy)
    assert prec.fast_fp32_available() is False
    monkeypatch.setattr(fast, "_fast_ok", None)


@pytest.mark.parametrize("ev", [16, 32])
def test_chunked_attention_equals_fused_kernel(ev, monkeypatch):
    monkeypatch.setattr("napari_sam2.models.blocked_attention._BLOCK_BYTES", 4096)  # many blocks
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, 50, 32, generator=gen)
    k = torch.randn(2, 3, 70, 32, generator=gen)
    v = torch.randn(2, 3, 70, ev, generator=gen)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(chunked_attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


def test_attend_then_project_equals_projecting_first():
    gen = torch.Generator().manual_seed(3)
    heads, d, c = 2, 32, 8
    proj = torch.nn.Linear(c, heads * d)
    q = torch.randn(1, heads, 40, d, generator=gen)
    k = torch.randn(1, heads, 60, d, generator=gen)
    tokens = torch.randn(1, 60, c, generator=gen)
    with torch.no_grad():
        v = proj(tokens).unflatten(-1, (heads, d)).transpose(1, 2)
        expected = F.scaled_dot_product_attention(q, k, v)
        got = attend_then_project(q, k, tokens, proj.weight, proj.bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rope_attention_uses_late_values_only_where_it_pays(monkeypatch):
    torch.manual_seed(4)
    from napari_sam2.models.kernel_choice import set_kernel_choices

    narrow = RoPEAttention(64, 1, kv_in_dim=16, rope_k_repeat=True, feat_sizes=(4, 4)).eval()
    wide = RoPEAttention(64, 1, rope_k_repeat=True, feat_sizes=(4, 4)).eval()
    set_kernel_choices({"values:cpu:float32": "project-first"})  # as measured on some CPUs
    assert not narrow._mix_before_value_projection(torch.zeros(1, 4, 16))
    set_kernel_choices({"values:cpu:float32": "mix-first"})  # and on others
    assert narrow._mix_before_value_projection(torch.zeros(1, 4, 16))
    assert not wide._mix_before_value_projection(torch.zeros(1, 4, 64))
    q, mem = torch.randn(1, 16, 64), torch.randn(1, 2 * 16 + 4, 16)
    with torch.no_grad():
        late = narrow(q, mem, mem, num_k_exclude_rope=4)
        monkeypatch.setattr(RoPEAttention, "_mix_before_value_projection", lambda self, v: False)
        early = narrow(q, mem, mem, num_k_exclude_rope=4)
    torch.testing.assert_close(late, early, rtol=1e-5, atol=1e-5)
    set_kernel_choices(None)


def test_models_built_under_inference_mode_work():
    """Parameters made under ``torch.inference_mode`` keep no version counter; the cached
    position encodings must still work (computed afresh) and follow new weights."""
    with torch.inference_mode():
        model = build_model("sam2.1_hiera_t", image_size=256)
        x = torch.randn(1, 3, 256, 256)
        first = model.image_encoder(x)["vision_features"].clone()
        pe = model.sam_prompt_encoder.get_dense_pe().clone()
        model.image_encoder.trunk.pos_embed.add_(1.0)
        model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
        assert not torch.equal(model.image_encoder(x)["vision_features"], first)
        assert not torch.equal(model.sam_prompt_encoder.get_dense_pe(), pe)
