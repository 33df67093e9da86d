"""Lazy, normalised frame sources for the video predictor (arrays, TIFF, folders, zarr)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from napari_sam2.core.stacks.normalization import Normalization
from napari_sam2.core.stacks.readers import TiffPagesArray, natural_sort_key
from napari_sam2.core.stacks.source import FrameReadError, FrameSource, open_frames


class CountingArray:
    """Array-like wrapper recording the frame (axis 0) indices its ``__getitem__`` reads."""

    def __init__(self, data: np.ndarray, fail_at: int | None = None) -> None:
        self._data, self.fail_at = data, fail_at
        self.shape, self.dtype = data.shape, data.dtype
        self.frames: list[int] = []
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> np.ndarray:
        first = key[0] if isinstance(key, tuple) else key
        rows = range(*first.indices(self.shape[0])) if isinstance(first, slice) else [first]
        with self._lock:
            self.frames.extend(int(r) for r in rows)
        if self.fail_at is not None and self.fail_at in rows:
            raise OSError("disk unplugged")
        return self._data[key]


def _dim_stack(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint16 T×H×W: background ~100, object ~400 -- black if cast or divided by 255."""
    rng = np.random.default_rng(seed)
    stack = rng.normal(100, 5, (n, 32, 40))
    obj = np.zeros((32, 40), bool)
    obj[10:20, 12:30] = True
    stack[:, obj] += 300
    return np.clip(stack, 0, None).astype(np.uint16), obj


def _check_ready(out: np.ndarray, hw: tuple[int, int]) -> None:
    assert out.shape == (*hw, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


# -- arrays -----------------------------------------------------------------------------------
def test_uint16_stack_dim_object_visible() -> None:
    stack, obj = _dim_stack()
    src = FrameSource(stack)
    assert (src.num_frames, len(src), src.frame_shape) == (6, 6, (32, 40))
    for i in range(src.num_frames):
        out = src.read(i)
        _check_ready(out, (32, 40))
        assert out[obj].mean() > out[~obj].mean() + 0.5
        assert np.array_equal(out[..., 0], out[..., 2])
    norm = src.normalization
    assert norm.resolved and norm.mode == "percentile" and norm.channel_axis is None
    (low, high), = norm.contrast_limits
    assert 80 < low < 110 and 380 < high < 430


def test_rgb_uint8_passthrough_is_byte_identical() -> None:
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 256, (5, 24, 30, 3), dtype=np.uint8)
    src = open_frames(stack)
    assert src.normalization.mode == "none" and src.channel_axis == 3
    for i in range(5):
        out = src.read(i)
        assert out.dtype == np.uint8 and np.array_equal(out, stack[i])
        assert not np.shares_memory(out, stack)


def test_two_channels_map_to_red_and_green() -> None:
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 4000, (4, 20, 24, 2)).astype(np.uint16)
    src = FrameSource(stack)
    assert src.channel_axis == 3 and src.normalization.channels == (0, 1)
    out = src.read(2)
    _check_ready(out, (20, 24))
    assert (out[..., 2] == 0).all() and out[..., 0].max() > 0.9 and out[..., 1].max() > 0.9
    # T×C×H×W is recognised as well, giving the same frames
    other = FrameSource(np.moveaxis(stack, 3, 1))
    assert other.channel_axis == 1 and np.array_equal(other.read(2), out)


def test_opening_reads_only_sampled_frames_and_read_only_one() -> None:
    stack, _ = _dim_stack(n=40)
    counting = CountingArray(stack)
    src = FrameSource(counting, max_sample_frames=4)
    assert sorted(set(counting.frames)) == [0, 13, 26, 39] and len(counting.frames) == 4
    counting.frames.clear()
    src.read(17)
    assert counting.frames == [17]
    # explicit limits: nothing read at all while opening
    counting.frames.clear()
    FrameSource(counting, contrast_limits=(90, 420))
    assert counting.frames == []


def test_memmap_and_dask_are_read_lazily(tmp_path: Path) -> None:
    stack, _ = _dim_stack(n=20)
    mm = np.memmap(tmp_path / "raw.dat", dtype=stack.dtype, mode="w+", shape=stack.shape)
    mm[:] = stack
    mm.flush()
    ro = np.memmap(tmp_path / "raw.dat", dtype=stack.dtype, mode="r", shape=stack.shape)
    ref = FrameSource(stack)
    with FrameSource(ro) as src:
        assert np.array_equal(src.read(7), ref.read(7))

    da = pytest.importorskip("dask.array")
    counting = CountingArray(stack)
    meta = np.empty((0, 0, 0), stack.dtype)
    lazy = da.from_array(counting, chunks=(1, 32, 40), asarray=True, meta=meta)
    counting.frames.clear()
    src = FrameSource(lazy, max_sample_frames=3)
    assert sorted(counting.frames) == [0, 10, 19]  # the sampled frames, each read once
    counting.frames.clear()
    out = src.read(5)
    assert counting.frames == [5]
    assert np.array_equal(out, FrameSource(stack, normalization=src.normalization).read(5))


def test_tiff_memmap_and_compressed_pages(tmp_path: Path) -> None:
    stack, _ = _dim_stack(n=7)
    plain, packed = tmp_path / "plain.tif", tmp_path / "packed.tif"
    tifffile.imwrite(plain, stack)
    tifffile.imwrite(packed, stack, compression="zlib")
    ref = FrameSource(stack)
    with open_frames(plain) as a, open_frames(str(packed)) as b:
        assert isinstance(a._view.data, np.memmap)
        assert isinstance(b._view.data, TiffPagesArray)
        assert a.normalization == b.normalization == ref.normalization
        for i in (0, 3, 6):
            assert np.array_equal(a.read(i), ref.read(i))
            assert np.array_equal(b.read(i), ref.read(i))
            assert np.array_equal(b.read_raw(i), stack[i])
    pages = TiffPagesArray(packed)
    assert np.array_equal(pages[2:5, 3, ::2], stack[2:5, 3, ::2])
    pages.close()
    pages.close()


def test_tiff_4d_pages_follow_time_at_one_plane(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 16 * 18, dtype=np.uint16).reshape(4, 5, 16, 18)
    path = tmp_path / "tzyx.tif"
    tifffile.imwrite(path, data, compression="zlib", metadata={"axes": "TZYX"})
    with FrameSource(path, frame_axis=0, position={1: 2}) as src:
        assert src.num_frames == 4
        for t in range(4):
            assert np.array_equal(src.read_raw(t), data[t, 2])


def test_image_folder_natural_order_and_vanishing_file(tmp_path: Path) -> None:
    import imageio.v3 as iio

    rng = np.random.default_rng(3)
    frames = {i: rng.integers(0, 255, (16, 20), dtype=np.uint8) for i in (1, 2, 10)}
    for i, im in frames.items():
        iio.imwrite(tmp_path / f"img{i}.png", im)
    (tmp_path / "notes.txt").write_text("not an image")
    assert sorted(["img10", "img2", "img1"], key=natural_sort_key) == ["img1", "img2", "img10"]
    src = open_frames(tmp_path, contrast_limits=(0, 255))
    assert src.num_frames == 3 and src.frame_shape == (16, 20)
    for k, i in enumerate((1, 2, 10)):
        assert np.array_equal(src.read_raw(k), frames[i])
        assert np.allclose(src.read(k)[..., 0], frames[i] / 255.0)
    (tmp_path / "img10.png").unlink()
    with pytest.raises(FrameReadError, match=r"frame 2 .*img10") as info:
        src.read(2)
    assert info.value.index == 2

    tif_dir = tmp_path / "tifs"
    tif_dir.mkdir()
    stack, _ = _dim_stack(n=3)
    for i, name in enumerate(("t1.tif", "t2.tiff", "t10.tif")):
        tifffile.imwrite(tif_dir / name, stack[i])
    with open_frames(tif_dir) as tsrc:
        assert [np.array_equal(tsrc.read_raw(i), stack[i]) for i in range(3)] == [True] * 3


# -- axes ---------------------------------------------------------------------------------------
def test_4d_tzyx_with_frame_axis_and_position() -> None:
    data = np.arange(3 * 5 * 8 * 9, dtype=np.uint16).reshape(3, 5, 8, 9)
    src = FrameSource(data, frame_axis=0, position={1: 2})
    assert src.num_frames == 3 and src.frame_shape == (8, 9)
    assert all(np.array_equal(src.read_raw(t), data[t, 2]) for t in range(3))
    src = FrameSource(data, frame_axis=1, position={0: 1})
    assert src.num_frames == 5
    assert all(np.array_equal(src.read_raw(z), data[1, z]) for z in range(5))
    lo, hi = src.normalization.contrast_limits[0]
    assert np.allclose(src.read(4)[..., 0], np.clip((data[1, 4] - lo) / (hi - lo), 0, 1))


def test_ambiguous_axes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"T×Z×Y×X.*frame_axis.*position"):
        FrameSource(np.zeros((3, 6, 8, 9), np.uint16))
    with pytest.raises(ValueError, match=r"frame_axis.*position"):
        FrameSource(np.zeros((2, 3, 6, 8, 9), np.uint16))
    with pytest.raises(ValueError, match=r"frame_axis.*position"):
        FrameSource(np.zeros((2, 7, 6, 8, 9), np.uint16), channel_axis=1)
    with pytest.raises(ValueError, match=r"single image \(H×W\).*SAM2ImagePredictor"):
        FrameSource(np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"single H×W×C image"):
        FrameSource(np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="spatial"):
        FrameSource(np.zeros((3, 6, 8, 9), np.uint16), frame_axis=0, position={3: 1})
    # 5D with everything placed works: T×Z×Y×X×C
    data = np.random.default_rng(0).integers(0, 99, (2, 3, 8, 9, 2)).astype(np.uint16)
    src = FrameSource(data, frame_axis=0, position={1: 1})
    assert src.channel_axis == 4 and np.array_equal(src.read_raw(1), data[1, 1])


def test_index_errors_and_failing_source() -> None:
    stack, _ = _dim_stack(n=5)
    src = FrameSource(stack)
    for bad in (5, -1, 100):
        with pytest.raises(IndexError, match=r"out of range.*5 frames"):
            src.read(bad)
    failing = CountingArray(stack, fail_at=3)
    src = FrameSource(failing, contrast_limits=(0, 500))
    src.read(2)
    with pytest.raises(FrameReadError, match=r"frame 3.*disk unplugged") as info:
        src.read(3)
    assert info.value.index == 3 and isinstance(info.value.__cause__, OSError)


def test_close_idempotent_and_context_manager(tmp_path: Path) -> None:
    stack, _ = _dim_stack(n=3)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, compression="zlib", photometric="minisblack")
    src = open_frames(path)
    reader = src._view.data
    src.close()
    src.close()
    assert src.closed and reader._tif is None
    with pytest.raises(ValueError, match="closed"):
        src.read(0)
    with FrameSource(stack) as ctx:
        ctx.read(0)
    assert ctx.closed
    assert open_frames(ctx) is ctx


# -- normalisation --------------------------------------------------------------------------
def test_explicit_contrast_limits_honoured() -> None:
    stack, _ = _dim_stack(n=4)
    src = FrameSource(stack, contrast_limits=(100, 300))
    assert src.normalization.mode == "limits"
    assert src.normalization.contrast_limits == ((100.0, 300.0),)
    expected = np.clip((stack[1].astype(np.float32) - 100) / 200, 0, 1)
    assert np.allclose(src.read(1)[..., 0], expected)


def test_normalization_recorded_and_reusable() -> None:
    stack, _ = _dim_stack(n=30, seed=4)
    first = FrameSource(stack, percentiles=(1, 99))
    again = FrameSource(stack, normalization=first.normalization)
    as_json = Normalization.from_dict(first.normalization.to_dict())
    third = FrameSource(stack, normalization=as_json)
    for i in (0, 11, 29):
        assert np.array_equal(first.read(i), again.read(i))
        assert np.array_equal(first.read(i), third.read(i))
    with pytest.raises(ValueError, match="not both"):
        FrameSource(stack, normalization=first.normalization, contrast_limits=(0, 1))
    with pytest.raises(TypeError, match="unexpected keyword"):
        FrameSource(stack, contrast=(0, 1))


def test_zarr_path(tmp_path: Path) -> None:
    import zarr  # a test dependency: the .zarr reader must be exercised

    stack, _ = _dim_stack(n=4)
    z = zarr.open(str(tmp_path / "s.zarr"), mode="w", shape=stack.shape, chunks=(1, 32, 40),
                  dtype=stack.dtype)
    z[:] = stack
    with open_frames(tmp_path / "s.zarr") as src:
        assert np.array_equal(src.read_raw(2), stack[2])


def test_list_of_frames_and_threads() -> None:
    stack, _ = _dim_stack(n=8)
    src = FrameSource(list(stack))
    ref = FrameSource(stack)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = src.read(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(results[i], ref.read(i)) for i in range(8))
