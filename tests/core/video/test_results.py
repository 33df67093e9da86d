"""ResultStore: bounded RAM window, exact spill to disk, conditioning frames, cleanup."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from napari_sam2.core.video.frame_output import FrameOutput
from napari_sam2.core.video.results import ResultStore

POS = [torch.randn(1, 8, 4, 4)]


def output(seed: int, memory: bool = True) -> FrameOutput:
    g = torch.Generator().manual_seed(seed)
    return FrameOutput(
        pred_masks=torch.randn(1, 1, 16, 16, generator=g) * 30,
        obj_ptr=torch.randn(1, 32, generator=g),
        object_score_logits=torch.randn(1, 1, generator=g),
        maskmem_features=(
            torch.randn(1, 8, 4, 4, generator=g).to(torch.bfloat16) if memory else None
        ),
        maskmem_pos_enc=POS if memory else None,
    )


def same(a: FrameOutput, b: FrameOutput) -> bool:
    for name in ("pred_masks", "obj_ptr", "object_score_logits", "maskmem_features"):
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None):
            return False
        if x is not None and (x.dtype != y.dtype or not torch.equal(x, y)):
            return False
    return (a.maskmem_pos_enc is None) == (b.maskmem_pos_enc is None)


def test_window_is_bounded_and_spilled_results_are_exact(tmp_path):
    store = ResultStore(200, ram_window=5, spill_dir=tmp_path)
    store.add_object("a")
    assert store.shared_pos_enc(POS) is not None
    store.put("a", 0, output(0), cond=True)
    for t in range(1, 200):
        store.put("a", t, output(t), cond=False)
        assert store.in_memory_count() <= 6
    assert store.in_memory_count() == 6 and store.spilled_count() == 194
    assert store.directory is not None and os.path.dirname(store.directory) == str(tmp_path)
    for t in [1, 57, 199, 3]:  # bit-identical, bfloat16 included
        got = store.get("a", t)
        assert same(got, output(t)) and torch.equal(got.maskmem_pos_enc[0], POS[0])
    assert store.in_memory_count() == 6
    assert store.cond_outputs("a").keys() == {0} and store.is_cond("a", 0)
    assert store.get("a", 0) is not None and store.get("a", 500) is None


def test_overwrite_reuses_records_and_layouts_mix(tmp_path):
    store = ResultStore(50, ram_window=2, spill_dir=tmp_path)
    store.add_object(1)
    for rnd in range(3):
        for t in range(50):
            store.put(1, t, output(t + 100 * rnd, memory=t % 2 == 0), cond=False)
    size = store.disk_bytes()
    for t in range(50):
        store.put(1, t, output(t + 300, memory=t % 2 == 0), cond=False)
    assert store.disk_bytes() == size  # records are rewritten in place
    for t in (0, 1, 25, 48):
        assert same(store.get(1, t), output(t + 300, memory=t % 2 == 0))
    store.pop(1, 10)
    assert store.get(1, 10) is None and 10 not in store.memory_bank(1)["non_cond_frame_outputs"]


def test_conditioning_frames_pinned_downgrade_and_views():
    store = ResultStore(10, ram_window=1)
    store.add_object("x")
    store.put("x", 3, output(3), cond=False)
    store.put("x", 3, output(4), cond=True)  # replaces the tracked result
    bank = store.memory_bank("x")
    assert list(bank["cond_frame_outputs"]) == [3]
    assert (
        bank["non_cond_frame_outputs"].get(3) is None
        and len(bank["non_cond_frame_outputs"]) == 0
    )
    assert store.downgrade("x", 3) and not store.downgrade("x", 3)
    view = store.memory_bank("x")["non_cond_frame_outputs"]
    assert 3 in view and same(view[3], output(4)) and list(view) == [3]
    with pytest.raises(KeyError):
        view[4]


def test_directory_lifetime(tmp_path):
    store = ResultStore(20, ram_window=1, spill_dir=tmp_path)
    store.add_object(0)
    store.add_object(1)
    assert store.directory is None
    for t in range(5):
        store.put(0, t, output(t), cond=False)
        store.put(1, t, output(t), cond=False)
    directory = store.directory
    assert os.path.isdir(directory)
    store.remove_object(1)
    assert store.in_memory_count() == 1
    store.clear()
    assert not os.path.exists(directory) and store.in_memory_count() == 0
    store.add_object(0)
    for t in range(3):
        store.put(0, t, output(t), cond=False)
    directory = store.directory
    with store:
        pass
    assert not os.path.exists(directory)
    store = ResultStore(20, ram_window=1, spill_dir=tmp_path)
    store.add_object(0)
    for t in range(3):
        store.put(0, t, output(t), cond=False)
    directory = store.directory
    del store
    gc.collect()
    assert not os.path.exists(directory)  # weakref.finalize safety net


def test_invalid_arguments():
    with pytest.raises(ValueError, match="ram_window"):
        ResultStore(10, ram_window=0)
    store = ResultStore(10)
    store.add_object(1)
    with pytest.raises(KeyError):
        store.add_object(1)
    with pytest.raises(KeyError):
        store.get(2, 0)
