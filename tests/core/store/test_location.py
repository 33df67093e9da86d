"""Default stores in the user cache: found again by the data, kept within the budget (least
recently used first), listed and cleared; the image predictor's stores."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from napari_sam2.core.image.predictor import SAM2ImagePredictor
from napari_sam2.core.store.location import (
    budget_bytes,
    clear_stores,
    default_root,
    evict,
    list_stores,
)
from napari_sam2.core.video.precompute import precompute
from napari_sam2.core.video.predictor import SAM2VideoPredictor

from .conftest import cell_stack, record_encodings


def _fill(model, data) -> None:
    predictor = SAM2VideoPredictor(model)
    with predictor.init_state(data) as state:
        list(precompute(predictor, state))


def test_default_store_found_again_listed_evicted_and_cleared(model, monkeypatch):
    calls = record_encodings(model)
    a, b = cell_stack(3, seed=0), cell_stack(3, seed=1)
    _fill(model, a)
    _fill(model, b)
    _fill(model, a)  # found again: nothing encoded
    assert len(calls) == 6
    entries = list_stores()
    assert len(entries) == 2 and all(e.complete == e.frames == 3 for e in entries)
    assert {e.precision for e in entries} == {"fp32"} and entries[0].input == "video"
    assert all(str(default_root()) in str(e.store) for e in entries)
    # both last used a while ago, the first one earlier
    first, second = entries
    now = time.time()
    os.utime(first.folder / "zarr.json", (now - 7200, now - 7200))
    os.utime(second.folder / "zarr.json", (now - 3600, now - 3600))
    removed = evict(budget=second.size_bytes + 1)
    assert removed == [first.folder] and not first.store.exists()
    assert [e.folder for e in list_stores()] == [second.folder]
    assert clear_stores(older_than_days=1) == []  # used an hour ago: kept
    assert clear_stores() == [second.folder] and list_stores() == []


def test_recently_used_stores_are_never_evicted(model):
    _fill(model, cell_stack(2))
    assert evict(budget=0) == [] and len(list_stores()) == 1


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("NAPARI_SAM2_STORE_GB", "1.5")
    assert budget_bytes() == 1_500_000_000
    monkeypatch.setenv("NAPARI_SAM2_STORE_GB", "lots")
    with pytest.raises(ValueError, match="gigabytes"):
        budget_bytes()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_image_predictor_reuses_stored_features_with_identical_masks(precision):
    from .conftest import tiny_model

    model = tiny_model(precision=precision)
    calls = record_encodings(model)
    image = cell_stack(1)[0]
    results = []
    for store in (False, None, None):  # RAM only, then written, then read back
        predictor = SAM2ImagePredictor(model, store=store)
        predictor.set_image(image)
        results.append(predictor.predict(point_coords=[[30, 30]], point_labels=[1],
                                         return_logits=True)[0])
    assert calls == [1, 1]
    assert (results[0] > 5).any()
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_segment_everything_second_run_encodes_nothing():
    from napari_sam2.api import segment_everything

    from .conftest import tiny_model

    model = tiny_model()
    calls = record_encodings(model)
    image = cell_stack(1)[0]
    first = segment_everything(image, model=model, points_per_side=4)
    second = segment_everything(image, model=model, points_per_side=4)
    assert len(calls) == 1 and np.array_equal(first, second)
