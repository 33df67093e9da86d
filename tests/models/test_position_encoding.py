"""Position encodings and attention against the reference, on the same inputs."""

from __future__ import annotations

import pytest
import torch
from sam2.modeling import position_encoding as ref
from sam2.modeling.sam.transformer import RoPEAttention as RefRoPEAttention
from sam2.modeling.sam2_utils import get_1d_sine_pe

from napari_sam2.models import position_encoding as ours
from napari_sam2.models.attention import RoPEAttention

TOL = 1e-5


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (12, 20)])
@pytest.mark.parametrize("feats", [64, 256])
def test_sine_2d(size: tuple[int, int], feats: int) -> None:
    x = torch.zeros(2, 3, *size)
    a = ref.PositionEmbeddingSine(feats)(x)
    b = ours.PositionEmbeddingSine(feats)(x)
    assert b.shape == (2, feats, *size)
    assert (a - b).abs().max().item() <= TOL


def test_sine_2d_is_cached() -> None:
    pe = ours.PositionEmbeddingSine(64)
    first = pe.grid(8, 8, torch.device("cpu"))
    assert pe.grid(8, 8, torch.device("cpu")) is first


def test_random_fourier() -> None:
    torch.manual_seed(0)
    a = ref.PositionEmbeddingRandom(64)
    b = ours.PositionEmbeddingRandom(64)
    b.load_state_dict(a.state_dict(), strict=True)
    assert (a((8, 6)) - b((8, 6))).abs().max().item() <= TOL
    coords = torch.rand(2, 5, 2) * 100
    diff = a.forward_with_coords(coords, (100, 80)) - b.forward_with_coords(coords, (100, 80))
    assert diff.abs().max().item() <= TOL


def test_sine_1d() -> None:
    pos = torch.tensor([0.0, 1.0, -3.0, 7.0, 15.0])
    assert (get_1d_sine_pe(pos, 64) - ours.sine_encoding_1d(pos, 64)).abs().max().item() <= TOL


@pytest.mark.parametrize("grid", [16, 64])
@pytest.mark.parametrize("exclude", [0, 4])
def test_rope_attention(grid: int, exclude: int) -> None:
    torch.manual_seed(1)
    kw = dict(embedding_dim=256, num_heads=1, kv_in_dim=64, rope_k_repeat=True)
    a = RefRoPEAttention(**kw).eval()
    b = RoPEAttention(**kw).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    n = grid * grid
    q = torch.randn(2, n, 256)
    k = torch.randn(2, 3 * n + exclude, 64)
    with torch.no_grad():
        diff = a(q, k, k, num_k_exclude_rope=exclude) - b(q, k, k, num_k_exclude_rope=exclude)
    assert diff.abs().max().item() <= 1e-4


def test_rope_needs_a_square_grid() -> None:
    layer = RoPEAttention(embedding_dim=32, num_heads=1)
    x = torch.randn(1, 10, 32)
    with pytest.raises(ValueError, match="square"):
        layer(x, x, x)
