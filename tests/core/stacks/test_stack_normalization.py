"""Microscopy-aware preprocessing: intensity mapping of 2D images and lazily read stacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam2.core.stacks.normalization import _percentile_limits
from napari_sam2.core.stacks.stack_normalization import (
    Normalization,
    normalize_frame,
    normalize_image,
    resolve_stack_normalization,
    sample_frame_indices,
)


def _assert_model_ready(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.shape == (*shape, 3)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def _dim_uint16(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Background ~100 ± noise with an object at ~400, in a 0..65535 dtype."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 5, (64, 80))
    obj = np.zeros(image.shape, bool)
    obj[20:40, 30:60] = True
    image[obj] += 300
    return np.clip(image, 0, None).astype(np.uint16), obj


# -- 2D images --------------------------------------------------------------------------------
def test_uint16_dim_object_is_visible() -> None:
    image, obj = _dim_uint16()
    out, norm = normalize_image(image)
    _assert_model_ready(out, image.shape)
    assert out.mean() > 0.05  # not black, unlike a cast to uint8 or a division by 255
    assert out[obj].mean() > out[~obj].mean() + 0.5  # object brighter than background
    assert np.percentile(out, 99) > 0.8  # the dynamic range is used
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert norm.resolved and norm.mode == "percentile" and norm.channels == (0,)
    assert norm.channel_axis is None
    (low, high), = norm.contrast_limits
    assert 80 < low < 100 < 400 < high < 430


def test_float_with_nan_and_inf() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((32, 32)).astype(np.float32) * 7.0 + 3.0
    image[0, :5] = np.nan
    image[1, 0], image[1, 1] = np.inf, -np.inf
    out, norm = normalize_image(image)
    _assert_model_ready(out, image.shape)
    assert (out[0, :5] == 0).all()
    assert out[1, 0, 0] == 1.0 and out[1, 1, 0] == 0.0
    low, high = norm.contrast_limits[0]
    assert np.isfinite([low, high]).all() and 3.0 <= low < high <= 10.0


def test_all_nan_and_constant_images_map_to_zeros() -> None:
    for image in (np.full((8, 8), np.nan), np.full((8, 8), 123, np.uint16)):
        out, _ = normalize_image(image)
        _assert_model_ready(out, (8, 8))
        assert not out.any()


def test_int16_with_negative_values() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(-900, -800, (40, 40)).astype(np.int16)
    image[10:30, 10:30] = rng.integers(-150, -100, (20, 20))
    out, norm = normalize_image(image)
    _assert_model_ready(out, image.shape)
    assert out[10:30, 10:30].mean() > 0.8 and out[:10].mean() < 0.2
    assert norm.contrast_limits[0][0] < -800


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_small_integer_limits_equal_numpy_percentiles(dtype) -> None:
    """8/16-bit limits come from a histogram; they must be numpy's own floats."""
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    for n in (1, 2, 7, 1000, 40_001):
        values = rng.integers(info.min, int(info.max) + 1, n).astype(dtype)
        values[: n // 3] = values[: n // 3] // 64 * 64  # ties
        for percentiles in ((0.0, 100.0), (0.5, 99.8), (13.7, 50.0)):
            want = tuple(float(v) for v in np.percentile(values, percentiles))
            if not want[1] > want[0]:
                want = (float(values.min()), float(values.max()))
            assert _percentile_limits(values, percentiles) == want


def test_int32_wide_values_keep_precision() -> None:
    image = np.full((16, 16), 2_000_000_000, np.int32)
    image[4:12, 4:12] += 3
    out, _ = normalize_image(image)
    assert out[8, 8, 0] == 1.0 and out[0, 0, 0] == 0.0


def test_sparse_spots_fall_back_to_min_max() -> None:
    image = np.zeros((100, 100), np.uint16)
    image[50, 50] = image[10, 90] = 1000  # 0.02 % of the pixels: both percentiles are 0
    out, norm = normalize_image(image)
    assert norm.contrast_limits == ((0.0, 1000.0),)
    assert out[50, 50, 0] == 1.0 and out.sum() == 2 * 3


def test_bool_mask_is_zero_one() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:4, 3:5] = True
    out, norm = normalize_image(mask)
    assert np.array_equal(out[..., 0], mask.astype(np.float32))
    assert norm.mode == "limits" and norm.contrast_limits == ((0.0, 1.0),)


def _labelled_channels(n: int, *, first: bool = False) -> np.ndarray:
    """H×W×n uint16: channel c is bright (1000 + 100 c) in rows 4c..4c+3, 10 elsewhere."""
    image = np.full((48, 40, n), 10, np.uint16)
    for c in range(n):
        image[4 * c:4 * c + 4, :, c] = 1000 + 100 * c
    return np.moveaxis(image, -1, 0) if first else image


def _bright_rows(out: np.ndarray, k: int) -> set[int]:
    return {int(r) for r in np.flatnonzero(out[:, :, k].mean(axis=1) > 0.5)}


def test_four_channels_default_first_three_and_explicit_pick() -> None:
    image = _labelled_channels(4)
    out, norm = normalize_image(image)
    assert norm.channel_axis == 2 and norm.channels == (0, 1, 2)
    assert [_bright_rows(out, k) for k in range(3)] == [
        set(range(0, 4)), set(range(4, 8)), set(range(8, 12))
    ]
    out, norm = normalize_image(image, channels=(0, 2, 3))
    _assert_model_ready(out, (48, 40))
    assert norm.channels == (0, 2, 3)
    assert [_bright_rows(out, k) for k in range(3)] == [
        set(range(0, 4)), set(range(8, 12)), set(range(12, 16))
    ]
    assert [lim[1] for lim in norm.contrast_limits] == [1000.0, 1200.0, 1300.0]  # per channel


def test_single_channel_pick_is_grey() -> None:
    out, norm = normalize_image(_labelled_channels(4), channels=3)
    assert norm.channels == (3,)
    for k in range(3):
        assert _bright_rows(out, k) == set(range(12, 16))


def test_two_channels_map_to_red_green() -> None:
    out, norm = normalize_image(_labelled_channels(2))
    assert norm.channels == (0, 1) and len(norm.contrast_limits) == 2
    assert _bright_rows(out, 0) == set(range(0, 4))
    assert _bright_rows(out, 1) == set(range(4, 8))
    assert not out[..., 2].any()
    out, _ = normalize_image(_labelled_channels(2), channels=(1, 0))
    assert _bright_rows(out, 0) == set(range(4, 8))


def test_channel_first_matches_channel_last() -> None:
    last, _ = normalize_image(_labelled_channels(3))
    first, norm = normalize_image(_labelled_channels(3, first=True))
    assert norm.channel_axis == 0
    assert np.array_equal(first, last)
    explicit, _ = normalize_image(_labelled_channels(3, first=True), channel_axis=0)
    assert np.array_equal(explicit, last)


def test_rgb_uint8_passes_through_unchanged() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    original = rgb.copy()
    out, norm = normalize_image(rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert out.tobytes() == original.tobytes()
    assert norm.mode == "none" and norm.contrast_limits is None
    again, _ = normalize_image(rgb, norm)
    assert again.tobytes() == original.tobytes()
    stretched, norm = normalize_image(rgb, percentiles=(1.0, 99.0))  # asking for it stretches
    assert stretched.dtype == np.float32 and norm.mode == "percentile"


def test_uint8_grey_is_stretched_but_mode_none_keeps_values() -> None:
    image = np.full((20, 20), 10, np.uint8)
    image[5:15, 5:15] = 50
    out, _ = normalize_image(image)
    assert out.dtype == np.float32 and out.max() == 1.0
    out, norm = normalize_image(image, Normalization(mode="none"))
    assert out.dtype == np.uint8 and out.shape == (20, 20, 3)
    assert np.array_equal(out[..., 2], image)
    with pytest.raises(ValueError, match="mode"):
        normalize_image(image.astype(np.uint16), Normalization(mode="none"))


def test_explicit_contrast_limits_are_honoured_exactly() -> None:
    image = np.array([[0, 100, 600], [1100, 5000, 100]], np.uint16)
    out, norm = normalize_image(image, contrast_limits=(100, 1100))
    assert norm.mode == "limits" and norm.contrast_limits == ((100.0, 1100.0),)
    assert out[..., 0].tolist() == [[0.0, 0.0, 0.5], [1.0, 1.0, 0.0]]
    floats = np.array([[0.1, 0.3], [0.7, 0.2]])
    out, _ = normalize_image(floats, contrast_limits=(0.1, 0.7))
    assert out[0, 0, 0] == 0.0 and out[1, 0, 0] == 1.0
    # one pair per channel
    two = np.stack([image, image * 2], axis=-1)
    out, norm = normalize_image(two, channel_axis=-1, contrast_limits=[(100, 1100), (200, 2200)])
    assert norm.contrast_limits == ((100.0, 1100.0), (200.0, 2200.0))
    assert np.array_equal(out[..., 0], out[..., 1])


def test_settings_round_trip_and_reapply() -> None:
    image, _ = _dim_uint16()
    out, norm = normalize_image(image, percentiles=(1, 99))
    restored = Normalization.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert restored == norm
    again, same = normalize_image(image, restored)
    assert same is restored
    assert np.array_equal(again, out)
    # a resolved record is applied as is, not recomputed on other data
    brighter, used = normalize_image(image * 2, restored)
    assert used == norm and brighter.mean() > out.mean()
    settings = Normalization(channels=(0, 2), channel_axis=-1, percentiles=(2, 98))
    assert Normalization.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ValueError, match="unknown"):
        Normalization.from_dict({"mode": "auto", "gamma": 2})


# -- stacks -----------------------------------------------------------------------------------
class CountingStack:
    """Array-like that records every key it is indexed with and refuses to be loaded whole."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.keys: list = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self._data[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was loaded")


def _timelapse(path, n_frames: int = 40, channels: int | None = None) -> np.memmap:
    shape = (n_frames, 24, 32) if channels is None else (n_frames, 24, 32, channels)
    mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=shape)
    rng = np.random.default_rng(4)
    mm[:] = rng.integers(100, 120, shape)
    for t in range(n_frames):  # a bleaching object: later frames are dimmer
        mm[t, 8:16, 8:16] = 1000 - 15 * t
    mm.flush()
    return mm


def test_stack_reads_only_sampled_frames(tmp_path) -> None:
    stack = CountingStack(_timelapse(tmp_path / "t.dat"))
    norm = resolve_stack_normalization(stack, max_sample_frames=5)
    sampled = sample_frame_indices(40, 5)
    assert sampled == (0, 10, 20, 29, 39)
    assert stack.keys == list(sampled)
    assert norm.resolved and norm.channels == (0,) and norm.channel_axis is None
    stack.keys.clear()
    frame = normalize_frame(stack, 25, norm)
    assert stack.keys == [25]
    assert np.array_equal(frame, norm.apply(stack._data[25]))
    _assert_model_ready(frame, (24, 32))
    # the same limits for every frame: the bleached object stays dimmer in later frames
    assert normalize_frame(stack, 0, norm)[12, 12, 0] > normalize_frame(stack, -1, norm)[12, 12, 0]
    # explicit limits need no frame at all
    stack.keys.clear()
    norm = resolve_stack_normalization(stack, contrast_limits=(100, 1000))
    assert stack.keys == [] and norm.contrast_limits == ((100.0, 1000.0),)


def test_multichannel_stack(tmp_path) -> None:
    stack = CountingStack(_timelapse(tmp_path / "c.dat", n_frames=6, channels=2))
    norm = resolve_stack_normalization(stack)
    assert stack.keys == list(range(6))
    assert norm.channel_axis == 2 and norm.channels == (0, 1) and len(norm.contrast_limits) == 2
    frame = normalize_frame(stack, 3, norm)
    assert np.array_equal(frame, norm.apply(stack._data[3]))
    assert not frame[..., 2].any()


def test_dask_stack_computes_only_sampled_frames() -> None:
    da = pytest.importorskip("dask.array")
    dask = pytest.importorskip("dask")
    data = np.random.default_rng(5).normal(0, 1, (50, 16, 16)).astype(np.float32)
    loaded: list[int] = []

    def load(t: int) -> np.ndarray:
        loaded.append(t)
        return data[t]

    stack = da.stack([
        da.from_delayed(dask.delayed(load)(t), shape=(16, 16), dtype=np.float32)
        for t in range(50)
    ])
    norm = resolve_stack_normalization(stack)
    assert sorted(loaded) == list(sample_frame_indices(50, 16))
    loaded.clear()
    frame = normalize_frame(stack, 7, norm)
    assert loaded == [7]
    assert np.array_equal(frame, norm.apply(data[7]))


def test_rgb_uint8_stack_passes_through() -> None:
    stack = np.random.default_rng(6).integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    norm = resolve_stack_normalization(CountingStack(stack))
    assert norm.mode == "none"
    frame = normalize_frame(stack, 2, norm)
    assert frame.dtype == np.uint8 and frame.tobytes() == stack[2].tobytes()


def test_sample_frame_indices_are_even_and_bounded() -> None:
    assert sample_frame_indices(3, 16) == (0, 1, 2)
    assert sample_frame_indices(1000, 16)[::5] == (0, 333, 666, 999)
    assert sample_frame_indices(10, 1) == (0,)
    for n in range(1, 60):
        for k in range(1, 20):
            idx = sample_frame_indices(n, k)
            assert len(idx) == min(n, k) and list(idx) == sorted(set(idx))
            assert idx[0] == 0 and (k == 1 or idx[-1] == n - 1)
    with pytest.raises(ValueError, match="max_sample_frames"):
        sample_frame_indices(10, 0)


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((0, 5)), {}, "`image` is empty"),
        (np.zeros((1, 1)), {}, "`image` must be at least 2×2"),
        (np.zeros((1, 50)), {}, "`image` must be at least 2×2"),
        (np.zeros((2, 3, 4, 5, 6)), {}, "`image` must be one 2D frame"),
        (np.zeros((4, 5, 6, 7)), {}, "`image` must be one 2D frame"),
        (np.zeros((8, 8), complex), {}, "`image` has dtype complex"),
        (np.array([[1, 2], [3, 4]], dtype=object), {}, "`image` has dtype object"),
        (np.zeros((30, 64, 64)), {}, "channel_axis"),  # a z-stack, or 30 channels?
        (np.zeros((64, 64, 8)), {}, "channel_axis"),
        (np.zeros((3, 64, 3), np.uint16), {}, "channel_axis"),
        (np.zeros((16, 16, 4)), {"channels": (0, 4)}, "channels"),
        (np.zeros((16, 16)), {"channels": (1,)}, "channels"),
        (np.zeros((16, 16)), {"channel_axis": 0}, "channel_axis"),
        (np.zeros((16, 16, 2)), {"channels": (0, 1, 0, 1)}, "channels"),
        (np.zeros((16, 16, 4)), {"contrast_limits": [(0, 1), (0, 1)]}, "contrast_limits"),
        (np.zeros((16, 16)), {"contrast_limits": (5, 1)}, "contrast_limits"),
        (np.zeros((16, 16)), {"percentiles": (99, 1)}, "percentiles"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(image, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        normalize_image(image, **kwargs)


def test_stack_errors() -> None:
    with pytest.raises(ValueError, match="stack"):
        resolve_stack_normalization(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="stack"):
        resolve_stack_normalization(np.zeros((2, 3, 16, 16, 2)))
    with pytest.raises(ValueError, match="stack has no frames"):
        resolve_stack_normalization(np.zeros((0, 16, 16)))
    with pytest.raises(ValueError, match="stack.*complex"):
        resolve_stack_normalization(np.zeros((3, 16, 16), complex))
    with pytest.raises(ValueError, match="resolve"):
        normalize_frame(np.zeros((3, 16, 16)), 0, Normalization())
    norm = resolve_stack_normalization(np.zeros((3, 16, 16)))
    with pytest.raises(IndexError, match="index"):
        normalize_frame(np.zeros((3, 16, 16)), 3, norm)
    with pytest.raises(ValueError, match="H×W frame"):  # frames of another layout
        normalize_frame(np.zeros((3, 16, 16, 2)), 0, norm)
    with pytest.raises(ValueError, match="either normalization or"):
        resolve_stack_normalization(np.zeros((3, 16, 16)), norm, channels=(0,))
