"""Helpers of the embedding-store tests: a tiny random-weight video model whose encoder runs
are recorded, and small stacks."""

from __future__ import annotations

import numpy as np
import pytest

CONFIG, SIZE = "sam2.1_hiera_t", 256


def tiny_model(seed: int = 0, precision: str = "fp32", image_size: int = SIZE):
    """The tiny network with seeded random weights (objects present, trained-size logits)."""
    import torch

    from napari_sam2.models.build import build_model
    from tests.conftest import realistic_weights

    torch.manual_seed(seed)
    model = build_model(CONFIG, image_size=image_size, video=True, precision=precision)
    realistic_weights(model)
    return model


def record_encodings(model) -> list[int]:
    """Replace ``model.forward_image`` by a recording one; returns the list it appends the
    batch size of each call to."""
    calls: list[int] = []
    original = model.forward_image

    def recording(x):
        calls.append(int(x.shape[0]))
        return original(x)

    model.forward_image = recording
    return calls


def cell_stack(n: int = 5, size: int = 64, seed: int = 0) -> np.ndarray:
    """``n×size×size`` uint16 frames: a bright square drifting on noise."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(100, 400, size=(n, size, size)).astype(np.uint16)
    for t in range(n):
        stack[t, 20:40, 10 + 3 * t : 30 + 3 * t] += 3000
    return stack


@pytest.fixture
def model():
    return tiny_model()
