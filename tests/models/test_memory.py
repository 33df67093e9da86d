"""Parity of the memory encoder and memory attention with the reference ``sam2`` package.

Modules are built with the arguments of ``sam2.1_hiera_t.yaml`` (the memory sections of the SAM 2
and SAM 2.1 configs are identical), the reference weights are loaded into ours with
``strict=True``, and outputs are compared in fp32 eval mode.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import sam2.modeling.memory_attention as ref_ma
import sam2.modeling.memory_encoder as ref_me
import sam2.modeling.position_encoding as ref_pe
import sam2.modeling.sam.transformer as ref_tr
import torch
from torch import nn

from napari_sam2.models.attention import RoPEAttention
from napari_sam2.models.memory_attention import MemoryAttention, MemoryAttentionLayer
from napari_sam2.models.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from napari_sam2.models.position_encoding import PositionEmbeddingSine

TOL = 1e-4
D_MODEL = 256
MEM_DIM = 64


# --------------------------------------------------------------------------- builders


def _memory_encoder_parts(mod_me, mod_pe) -> nn.Module:
    return mod_me.MemoryEncoder(
        out_dim=MEM_DIM,
        position_encoding=mod_pe.PositionEmbeddingSine(
            num_pos_feats=MEM_DIM, normalize=True, scale=None, temperature=10000
        ),
        mask_downsampler=mod_me.MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=mod_me.Fuser(
            layer=mod_me.CXBlock(
                dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True
            ),
            num_layers=2,
        ),
    )


def _memory_attention_parts(mod_ma, rope_cls) -> nn.Module:
    rope_common = dict(
        rope_theta=10000.0,
        feat_sizes=[64, 64],
        embedding_dim=256,
        num_heads=1,
        downsample_rate=1,
        dropout=0.1,
    )
    layer = mod_ma.MemoryAttentionLayer(
        activation="relu",
        dim_feedforward=2048,
        dropout=0.1,
        pos_enc_at_attn=False,
        self_attention=rope_cls(**rope_common),
        d_model=256,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=rope_cls(rope_k_repeat=True, kv_in_dim=64, **rope_common),
    )
    return mod_ma.MemoryAttention(d_model=256, pos_enc_at_input=True, layer=layer, num_layers=4)


class _Ours:
    """Our modules exposed under the reference's module attribute names."""

    MemoryEncoder = MemoryEncoder
    MaskDownSampler = MaskDownSampler
    CXBlock = CXBlock
    Fuser = Fuser
    PositionEmbeddingSine = PositionEmbeddingSine
    MemoryAttention = MemoryAttention
    MemoryAttentionLayer = MemoryAttentionLayer


def _randomize_(module: nn.Module, gen: torch.Generator) -> None:
    """Give norms and layer scales non-trivial values (default gamma=1e-6 would hide the fuser)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma" or ("norm" in name and leaf == "weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif ("norm" in name and leaf == "bias") or name.startswith("mask_downsampler"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _pair(kind: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    if kind == "encoder":
        ref = _memory_encoder_parts(ref_me, ref_pe)
        ours = _memory_encoder_parts(_Ours, _Ours)
    else:
        ref = _memory_attention_parts(ref_ma, ref_tr.RoPEAttention)
        ours = _memory_attention_parts(_Ours, RoPEAttention)
    _randomize_(ref, torch.Generator().manual_seed(1))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.float().eval(), ours.float().eval()


@pytest.fixture(scope="module")
def encoder_pair() -> tuple[nn.Module, nn.Module]:
    return _pair("encoder")


@pytest.fixture(scope="module")
def attention_pair() -> tuple[nn.Module, nn.Module]:
    return _pair("attention")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- checkpoint layout


def _assert_same_layout(ours: nn.Module, ref: nn.Module) -> None:
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(our_shapes) == list(ref_shapes)
    assert our_shapes == ref_shapes


def test_state_dict_keys_and_shapes_match(encoder_pair, attention_pair) -> None:
    for ref, ours in (encoder_pair, attention_pair):
        _assert_same_layout(ours, ref)


@pytest.mark.parametrize(
    "config", ["sam2.1/sam2.1_hiera_t.yaml", "sam2/sam2_hiera_t.yaml", "sam2.1/sam2.1_hiera_l.yaml"]
)
@pytest.mark.parametrize("section", ["memory_attention", "memory_encoder"])
def test_packaged_config_builds_reference_layout(config: str, section: str) -> None:
    """Our YAML sections instantiate our classes with the reference's checkpoint layout."""
    import hydra.utils as hydra_utils
    import omegaconf as omegaconf
    import sam2

    import napari_sam2.models

    ours_cfg = omegaconf.OmegaConf.load(
        Path(napari_sam2.models.__file__).parent / "configs" / config
    )
    ref_cfg = omegaconf.OmegaConf.load(Path(sam2.__file__).parent / "configs" / config)
    ours = hydra_utils.instantiate(ours_cfg.model[section])
    ref = hydra_utils.instantiate(ref_cfg.model[section])
    assert type(ours).__module__.startswith("napari_sam2.")
    _assert_same_layout(ours, ref)


@pytest.mark.parametrize(
    "name",
    ["MaskDownSampler", "CXBlock", "Fuser", "MemoryEncoder"],
)
def test_encoder_constructor_signatures(name: str) -> None:
    ref_params = inspect.signature(getattr(ref_me, name).__init__).parameters
    our_params = inspect.signature(getattr(_Ours, name).__init__).parameters
    assert list(our_params) == list(ref_params)
    for key, p in ref_params.items():
        assert our_params[key].default == p.default, key


@pytest.mark.parametrize("name", ["MemoryAttentionLayer", "MemoryAttention"])
def test_attention_constructor_signatures(name: str) -> None:
    ref_params = inspect.signature(getattr(ref_ma, name).__init__).parameters
    our_params = inspect.signature(getattr(_Ours, name).__init__).parameters
    assert list(our_params) == list(ref_params)
    for key, p in ref_params.items():
        assert our_params[key].default == p.default, key
    ref_fwd = inspect.signature(getattr(ref_ma, name).forward).parameters
    our_fwd = inspect.signature(getattr(_Ours, name).forward).parameters
    assert list(our_fwd) == list(ref_fwd)


def test_fuser_clones_are_independent() -> None:
    block = CXBlock(dim=8)
    fuser = Fuser(block, num_layers=2)
    assert fuser.layers[0] is not block and fuser.layers[0] is not fuser.layers[1]
    assert fuser.layers[0].gamma is not fuser.layers[1].gamma


# --------------------------------------------------------------------------- memory encoder


@pytest.mark.parametrize("skip_mask_sigmoid", [False, True])
def test_memory_encoder_matches_reference(encoder_pair, skip_mask_sigmoid: bool) -> None:
    ref, ours = encoder_pair
    gen = torch.Generator().manual_seed(2)
    b = 2
    pix_feat = torch.randn(b, 256, 16, 16, generator=gen)
    if skip_mask_sigmoid:  # SAM2Base passes a scaled sigmoid of the logits
        masks = torch.sigmoid(20.0 * torch.randn(b, 1, 256, 256, generator=gen) - 10.0)
    else:
        masks = 8.0 * torch.randn(b, 1, 256, 256, generator=gen)
    with torch.no_grad():
        expected = ref(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
        got = ours(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)

    assert set(got) == {"vision_features", "vision_pos_enc"}
    assert got["vision_features"].shape == (b, MEM_DIM, 16, 16)
    assert len(got["vision_pos_enc"]) == 1
    feat_diff = _max_diff(got["vision_features"], expected["vision_features"])
    pos_diff = _max_diff(got["vision_pos_enc"][0], expected["vision_pos_enc"][0])
    print(
        f"memory encoder skip_sigmoid={skip_mask_sigmoid}: "
        f"feat {feat_diff:.2e} pos {pos_diff:.2e}"
    )
    assert feat_diff <= TOL
    assert pos_diff <= TOL


# --------------------------------------------------------------------------- memory attention


def _memory_inputs(
    side: int, num_frames: int, num_ptrs: int, batch: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Sequence-first inputs shaped like ``SAM2Base._prepare_memory_conditioned_features``."""
    gen = torch.Generator().manual_seed(seed)
    hw = side * side
    sine = PositionEmbeddingSine(D_MODEL)
    curr = torch.randn(hw, batch, D_MODEL, generator=gen)  # HW×B×C
    curr_pos = sine.grid(side, side, torch.device("cpu")).flatten(1).permute(1, 0)  # HW×C
    curr_pos = curr_pos[:, None].expand(hw, batch, D_MODEL).contiguous()

    mem_sine = PositionEmbeddingSine(MEM_DIM).grid(side, side, torch.device("cpu"))
    mem_sine = mem_sine.flatten(1).permute(1, 0)  # HW×64
    memory, memory_pos = [], []
    for _ in range(num_frames):
        memory.append(torch.randn(hw, batch, MEM_DIM, generator=gen))
        tpos = 0.02 * torch.randn(1, 1, MEM_DIM, generator=gen)
        memory_pos.append(mem_sine[:, None] + tpos)  # HW×B×64 after broadcast
    memory_pos = [p.expand(hw, batch, MEM_DIM) for p in memory_pos]

    num_ptr_tokens = 0
    if num_ptrs:
        split = D_MODEL // MEM_DIM
        ptrs = torch.randn(num_ptrs, batch, D_MODEL, generator=gen)  # P×B×256
        ptrs = ptrs.reshape(num_ptrs, batch, split, MEM_DIM).permute(0, 2, 1, 3).flatten(0, 1)
        ptr_pos = torch.randn(num_ptrs, 1, MEM_DIM, generator=gen).expand(-1, batch, -1)
        ptr_pos = ptr_pos.repeat_interleave(split, dim=0)  # (P*4)×B×64
        memory.append(ptrs)
        memory_pos.append(ptr_pos)
        num_ptr_tokens = ptrs.shape[0]
    return curr, curr_pos, torch.cat(memory), torch.cat(memory_pos), num_ptr_tokens


@pytest.mark.parametrize(
    ("side", "num_frames", "num_ptrs", "batch"),
    [
        (16, 2, 1, 2),  # 4 pointer tokens
        (16, 7, 4, 2),  # 16 pointer tokens
        (16, 2, 0, 2),  # no pointers
        (16, 7, 0, 1),
        (64, 1, 1, 1),  # 1024-px image: the default RoPE grid
    ],
)
def test_memory_attention_matches_reference(
    attention_pair, side: int, num_frames: int, num_ptrs: int, batch: int
) -> None:
    ref, ours = attention_pair
    curr, curr_pos, memory, memory_pos, n_ptr = _memory_inputs(
        side, num_frames, num_ptrs, batch, seed=side + num_frames + num_ptrs
    )
    assert n_ptr == 4 * num_ptrs
    with torch.no_grad():
        expected = ref(
            curr=[curr], curr_pos=[curr_pos], memory=memory, memory_pos=memory_pos,
            num_obj_ptr_tokens=n_ptr,
        )
        got = ours(
            curr=[curr], curr_pos=[curr_pos], memory=memory, memory_pos=memory_pos,
            num_obj_ptr_tokens=n_ptr,
        )
    assert got.shape == (side * side, batch, D_MODEL)
    diff = _max_diff(got, expected)
    print(f"memory attention {side}x{side} frames={num_frames} ptr_tokens={n_ptr}: {diff:.2e}")
    assert diff <= TOL


def test_memory_attention_accepts_plain_tensors(attention_pair) -> None:
    _, ours = attention_pair
    curr, curr_pos, memory, memory_pos, n_ptr = _memory_inputs(16, 1, 1, 1, seed=5)
    with torch.no_grad():
        from_list = ours([curr], memory, [curr_pos], memory_pos, n_ptr)
        from_tensor = ours(curr, memory, curr_pos, memory_pos, n_ptr)
    torch.testing.assert_close(from_list, from_tensor, rtol=0, atol=0)


def test_pointer_tokens_are_excluded_from_rope(attention_pair) -> None:
    """Counting the pointers as spatial tokens must change the result (guards the plumbing)."""
    _, ours = attention_pair
    curr, curr_pos, memory, memory_pos, n_ptr = _memory_inputs(16, 1, 1, 1, seed=6)
    # make the pointer tokens' keys depend on position by appending a whole grid's worth of them
    memory = torch.cat([memory[:-n_ptr], memory[:256], memory[-n_ptr:]])
    memory_pos = torch.cat([memory_pos[:-n_ptr], memory_pos[:256], memory_pos[-n_ptr:]])
    with torch.no_grad():
        excluded = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=n_ptr + 256)
        included = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=n_ptr)
    assert (excluded - included).abs().max().item() > 1e-3


def test_batch_size_mismatch_raises(attention_pair) -> None:
    _, ours = attention_pair
    curr, curr_pos, memory, memory_pos, _ = _memory_inputs(16, 1, 0, 2, seed=7)
    with pytest.raises(ValueError):
        ours(curr, memory[:, :1], curr_pos, memory_pos[:, :1])
