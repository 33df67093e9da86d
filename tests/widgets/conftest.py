"""Fixtures of the dock-widget tests: a real napari viewer, the widget docked in it the way a
user (or script) gets it, and a tiny random-weight model loaded through the real
"checkpoint file" path.

About the weights: ``official_checkpoint("sam2.1_hiera_t", 256)`` holds the reference's random
weights. Its masks mean nothing, but they are deterministic. SAM 2 replaces an object's mask by
"nothing" whenever its object-presence logit is negative, which random weights decide
arbitrarily per frame; to make every mask non-empty, the checkpoint used here has
``PRESENCE_SHIFT`` added to the last bias of ``sam_mask_decoder.pred_obj_score_head``, so the
object is always judged present (tests/models/test_sam2_model.py shifts the same bias for its
tracking tests). The masks then cover most of a frame (about 90 % of the pixels at 256 px),
which is all the tests need: non-empty, and different after a negative click.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CONFIG, SIZE = "sam2.1_hiera_t", 256
PRESENCE_SHIFT = 10.0
WIDGET_NAME = "SAM 2 Segmentation"


@pytest.fixture(scope="session")
def widget_checkpoint(official_checkpoint, tmp_path_factory) -> Path:
    """The tiny model's checkpoint file, with objects always present (see the module doc)."""
    import torch

    state = torch.load(official_checkpoint(CONFIG, SIZE), map_location="cpu", weights_only=True)
    key = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
    state["model"][key] = state["model"][key] + PRESENCE_SHIFT
    path = tmp_path_factory.mktemp("widget") / "sam2.1_tiny_present.pt"
    torch.save(state, path)
    return path


def blob_stack(n_frames: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    """A small uint16 stack with a bright square drifting right on a noisy background."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(100, 400, size=(n_frames, size, size)).astype(np.uint16)
    for t in range(n_frames):
        stack[t, 20:40, 15 + 2 * t : 35 + 2 * t] += 2000
    return stack


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    """``dock(data, **image_kwargs)`` -> ``(viewer, widget)``: the widget docked through the
    plugin manifest next to an image layer holding ``data``."""

    def make(data: np.ndarray, **kwargs):
        viewer = make_napari_viewer()
        viewer.add_image(data, name="cells", **kwargs)
        _, widget = viewer.window.add_plugin_dock_widget("napari-sam2", WIDGET_NAME)
        return viewer, widget

    return make


@pytest.fixture
def loaded(dock, widget_checkpoint, qtbot):
    """``loaded(data, **image_kwargs)`` -> ``(viewer, widget)`` with the tiny model loaded."""

    def make(data: np.ndarray, **kwargs):
        viewer, widget = dock(data, **kwargs)
        with qtbot.waitSignal(widget.model_loaded, timeout=60_000):
            widget.set_model(str(widget_checkpoint), device="cpu", image_size=SIZE)
        return viewer, widget

    return make


def wait_idle(qtbot, widget, timeout: int = 60_000) -> None:
    """Wait until every queued prediction has been computed and written."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)
