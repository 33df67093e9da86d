"""Encode a stack into its embedding store ahead of annotation (``napari-sam2 embed``, the
widget's "Precompute embeddings", batch workers).

:func:`precompute` is a generator over the frames of a range: per frame it yields whether the
frame had to be encoded or was already stored for its current pixels, so a run that was
cancelled or killed resumes where it stopped, and one over a complete store only reads and
signs each frame. Progress bars, threads and cluster tasks wrap it from outside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from .predictor import SAM2VideoPredictor
from .prompts import check_frame_idx
from .state import VideoInferenceState

__all__ = ["PrecomputeStep", "precompute"]


class PrecomputeStep(NamedTuple):
    """One frame of :func:`precompute`: its index, and whether it was encoded now (``False``:
    its features were in the store already)."""

    frame_idx: int
    encoded: bool


def precompute(
    predictor: SAM2VideoPredictor, state: VideoInferenceState,
    frame_range: tuple[int, int] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[PrecomputeStep]:
    """Make sure every frame of ``frame_range`` (``(first, last)``, inclusive; default all)
    has its features in the state's embedding store, in frame order.

    Raises ``ValueError`` when the state has no store (``store=False``) or it is read-only,
    ``IndexError`` for a range outside the stack. ``should_stop()`` is asked before each frame.
    """
    if state.store is None:
        raise ValueError("this stack has no embedding store (store=False): nothing to precompute")
    if state.store.store.read_only:
        raise ValueError(
            f"the embedding store {state.store.store.path} is read-only: it cannot be filled"
        )
    n = state.num_frames
    first, last = (0, n - 1) if frame_range is None else frame_range
    first, last = check_frame_idx(first, n), check_frame_idx(last, n)
    if first > last:
        raise ValueError(f"frame_range {frame_range} is empty: first must be <= last")
    for frame_idx in range(first, last + 1):
        if should_stop is not None and should_stop():
            return
        with torch.inference_mode():
            encoded = predictor.encoder.store_frame(state, frame_idx)
        yield PrecomputeStep(frame_idx, encoded)
