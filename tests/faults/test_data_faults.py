"""Data a user may hand us that cannot or should not be processed as it is: frames too large
for memory (refused before anything is read), NaN and inf in the middle of a stack."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2.core.stacks import frame_memory
from napari_sam2.core.stacks.frame_memory import FrameTooLargeError, frame_bytes
from napari_sam2.core.stacks.normalization import normalize_image
from napari_sam2.core.stacks.source import open_frames


class _Unreadable:
    """A huge array-like that fails the test if any pixel is read."""

    def __init__(self, shape, dtype) -> None:
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        raise AssertionError("a frame was read")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the array was loaded")


def test_a_slide_too_large_for_memory_is_refused_before_any_read(monkeypatch):
    monkeypatch.setattr(frame_memory, "available_memory", lambda: 16 * 10**9)
    slide = _Unreadable((3, 40_000, 40_000), np.uint16)
    with pytest.raises(FrameTooLargeError) as info:
        open_frames(slide)
    message = str(info.value)
    assert "40000×40000 (uint16)" in message and "28.8 GB" in message
    assert "16.0 GB free" in message and "downsample" in message
    assert frame_bytes((40_000, 40_000), np.uint16) == 40_000**2 * (2 + 12 + 4)
    with pytest.raises(FrameTooLargeError, match="image of 40000×40000"):
        normalize_image(_Unreadable((40_000, 40_000), np.uint16))
    # what fits is opened as before
    assert open_frames(np.zeros((2, 64, 64), np.uint16)).num_frames == 2


def test_nan_and_inf_frames_mid_stack_are_tracked_like_a_first_one():
    import torch

    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    from tests.core.store.conftest import tiny_model

    rng = np.random.default_rng(0)
    stack = rng.normal(1.0, 0.1, (5, 64, 64)).astype(np.float32)
    stack[:, 20:40, 20:40] += 2.0
    stack[2] = np.nan  # a dropped frame
    stack[3, :10] = np.inf
    stack[3, 10:20] = -np.inf
    predictor = SAM2VideoPredictor(tiny_model(), store=False)
    with predictor.init_state(stack) as state:
        assert np.isfinite(state.frames.normalization.contrast_limits).all()
        predictor.add_new_points_or_box(state, 0, 1, points=[[30, 30]], labels=[1])
        frames = {f: m for f, _, m in predictor.propagate_in_video(state)}
    assert sorted(frames) == [0, 1, 2, 3, 4]
    assert all(torch.isfinite(m).all() for m in frames.values())
    # the NaN frame gives what an all-NaN first frame gives: a frame of zeros
    with SAM2VideoPredictor(tiny_model(), store=False).init_state(stack[2:]) as state:
        image = state.frames.normalize(state.frames.read_raw(0))
    assert np.isfinite(image).all() and not image.any()


def test_the_command_line_refuses_a_frame_too_large_in_one_line(tmp_path, monkeypatch, capsys):
    import tifffile

    from napari_sam2.cli.main import main

    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, np.zeros((2, 300, 400), np.uint16), photometric="minisblack")
    monkeypatch.setattr(frame_memory, "available_memory", lambda: 10**6)  # 1 MB free
    code = main(["embed", str(path), "--config", "sam2.1_hiera_t", "--image-size", "256",
                 "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "300×400 (uint16) needs about" in lines[0], err
