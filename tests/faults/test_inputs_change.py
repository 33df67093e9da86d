"""Inputs that change under a running job: a zarr stack removed mid-propagation, a checkpoint
file overwritten after it was loaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from napari_sam2.core.stacks.source import FrameReadError
from tests.core.store.conftest import cell_stack, tiny_model


def test_a_zarr_stack_removed_mid_run_stops_with_a_clear_message(tmp_path):
    import zarr

    from napari_sam2.core.video.predictor import SAM2VideoPredictor

    path = tmp_path / "cells.zarr"
    stack = cell_stack(8)
    z = zarr.create_array(str(path), shape=stack.shape, chunks=(1, 64, 64), dtype=stack.dtype)
    z[:] = stack
    predictor = SAM2VideoPredictor(tiny_model(), store=False, feature_cache_size=1)
    delivered = []
    with predictor.init_state(str(path)) as state:
        predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[1])
        with pytest.raises(FrameReadError) as info:
            for frame_idx, _, _masks in predictor.propagate_in_video(state):
                delivered.append(frame_idx)
                if frame_idx == 2:
                    shutil.rmtree(path)  # the folder goes (a share unmounted, a user's rm)
    assert "removed or moved while it was being read" in str(info.value)
    assert info.value.index == 3 and delivered == [0, 1, 2]  # no black frame was tracked


def test_a_checkpoint_overwritten_after_loading_changes_nothing(tmp_path, official_checkpoint):
    from napari_sam2.models.checkpoints import load_model

    path = tmp_path / "model.pt"
    path.write_bytes(official_checkpoint("sam2.1_hiera_t", 256).read_bytes())
    model = load_model(path, config="sam2.1_hiera_t", device="cpu", image_size=256,
                       precision="fp32")
    x = torch.rand(1, 3, 256, 256)
    before = model.forward_image(x)["vision_features"].clone()
    with open(path, "r+b") as f:  # overwritten in place, same size: garbage
        size = f.seek(0, 2)
        f.seek(0)
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    after = model.forward_image(x)["vision_features"]
    assert torch.equal(before, after)  # the weights were copied out of the file
