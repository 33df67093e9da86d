"""The store behind the predictors: a later process encodes nothing, changes recompute exactly
what they must, kills and concurrent writers leave a store that is read correctly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_sam2.core.stacks.normalization import Normalization
from napari_sam2.core.video.precompute import precompute
from napari_sam2.core.video.predictor import SAM2VideoPredictor

from .conftest import CONFIG, SIZE, cell_stack, record_encodings, tiny_model

ROOT = Path(__file__).resolve().parents[3]

# A child process: load the checkpoint, track a 5-frame stack with the store, report how many
# times the image encoder ran and save every mask's logits.
CHILD = textwrap.dedent("""
    import sys, json, numpy as np, torch
    from napari_sam2.models.checkpoints import load_model
    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    ckpt, stack, store, out = sys.argv[1:5]
    model = load_model(ckpt, config="{config}", image_size={size}, video=True,
                       device="cpu", precision="fp32")
    calls = []
    original = model.forward_image
    model.forward_image = lambda x: calls.append(1) or original(x)
    predictor = SAM2VideoPredictor(model)
    state = predictor.init_state(stack, store=store)
    predictor.add_new_points_or_box(state, 1, 1, points=[[30, 30]], labels=[1])
    logits = [m.numpy() for _, _, m in predictor.propagate(state, direction="both")]
    state.close()
    np.save(out, np.stack(logits))
    print(json.dumps({{"encoded": len(calls)}}))
""").format(config=CONFIG, size=SIZE)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_model().state_dict()}, path)
    return path


def _child(*args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )


def test_a_second_process_runs_the_encoder_zero_times_with_identical_masks(tmp_path, checkpoint):
    import json

    stack = tmp_path / "cells.tif"
    tifffile.imwrite(stack, cell_stack(5), photometric="minisblack")
    store = tmp_path / "cells.zarr"
    results = []
    for run in range(2):
        child = _child(checkpoint, stack, store, tmp_path / f"run{run}.npy")
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1])["encoded"])
    assert results == [5, 0]
    first, second = np.load(tmp_path / "run0.npy"), np.load(tmp_path / "run1.npy")
    assert (first > 5).any() and np.array_equal(first, second)


def _encoded_frames(model, predictor, state) -> list[int]:
    """Frames whose features precompute had to compute."""
    return [s.frame_idx for s in precompute(predictor, state) if s.encoded]


def test_changes_recompute_exactly_what_they_must(tmp_path, model):
    stack = cell_stack(5)
    store = tmp_path / "cells.zarr"
    predictor = SAM2VideoPredictor(model, store=store)

    def encoded(data, **kwargs) -> list[int]:
        with predictor.init_state(data, **kwargs) as state:
            return _encoded_frames(model, predictor, state)

    limits = {"contrast_limits": (100, 3500)}
    assert encoded(stack, **limits) == [0, 1, 2, 3, 4]
    assert encoded(stack, **limits) == []
    changed = stack.copy()
    changed[3, 5, 5] += 1  # one pixel of one frame
    assert encoded(changed, **limits) == [3]
    assert encoded(changed, contrast_limits=(100, 3000)) == [0, 1, 2, 3, 4]  # normalisation
    assert encoded(changed, **limits) == []  # the first normalisation's features are kept

    other = tiny_model(seed=1)  # another model
    assert encoded_with(other, store, changed, **limits) == [0, 1, 2, 3, 4]
    smaller = tiny_model(image_size=512)  # another image size
    assert encoded_with(smaller, store, changed, **limits) == [0, 1, 2, 3, 4]
    from napari_sam2.models.precision import set_precision

    set_precision(model, "bf16")  # another precision, on the same predictor and network
    assert encoded(changed, **limits) == [0, 1, 2, 3, 4]
    set_precision(model, "fp32")
    assert encoded(changed, **limits) == []


def encoded_with(model, store, data, **kwargs) -> list[int]:
    predictor = SAM2VideoPredictor(model, store=store)
    with predictor.init_state(data, **kwargs) as state:
        return _encoded_frames(model, predictor, state)


def test_precision_change_mid_state_moves_to_the_new_key(tmp_path, model):
    from napari_sam2.models.precision import set_precision

    predictor = SAM2VideoPredictor(model, store=tmp_path / "s.zarr")
    calls = record_encodings(model)
    with predictor.init_state(cell_stack(3)) as state:
        list(precompute(predictor, state))
        set_precision(model, "bf16")
        state.feature_cache.clear()
        assert [s.encoded for s in precompute(predictor, state)] == [True] * 3
        assert state.store.store.key.precision == "bf16"
    assert len(calls) == 6


KILLED = textwrap.dedent("""
    import sys, time, numpy as np, torch
    from napari_sam2.models.checkpoints import load_model
    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    from napari_sam2.core.video.precompute import precompute
    import napari_sam2.core.store.embedding_store as es
    ckpt, stack, store, marker = sys.argv[1:5]
    model = load_model(ckpt, config="{config}", image_size={size}, video=True,
                       device="cpu", precision="fp32")
    original = es.EmbeddingStore.write

    def write(self, index, signature, levels, positions):
        if index != 2:
            return original(self, index, signature, levels, positions)
        # frame 2: its first feature level is written, then the process is killed
        self._levels[0][index] = es._to_numpy(levels[0][0])
        open(marker, "w").close()
        time.sleep(600)

    es.EmbeddingStore.write = write
    predictor = SAM2VideoPredictor(model)
    state = predictor.init_state(stack, store=store)
    for step in precompute(predictor, state):
        pass
""").format(config=CONFIG, size=SIZE)


def test_a_store_left_by_a_killed_writer_is_read_correctly(tmp_path, checkpoint):
    from napari_sam2.models.checkpoints import load_model

    stack = tmp_path / "cells.tif"
    tifffile.imwrite(stack, cell_stack(4), photometric="minisblack")
    store, marker = tmp_path / "cells.zarr", tmp_path / "writing-frame-2"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(checkpoint), str(stack), str(store), str(marker)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    model = load_model(checkpoint, config=CONFIG, image_size=SIZE, video=True, device="cpu",
                       precision="fp32")
    predictor = SAM2VideoPredictor(model, store=store)
    with predictor.init_state(str(stack)) as state:
        assert state.store.complete().tolist() == [True, True, False, False]
        assert _encoded_frames(model, predictor, state) == [2, 3]  # 0 and 1 reused
    fresh = SAM2VideoPredictor(model, store=False)
    with predictor.init_state(str(stack)) as stored, fresh.init_state(str(stack)) as computed:
        for t in range(4):
            a = predictor.encoder.features(stored, t).backbone_fpn
            b = fresh.encoder.features(computed, t).backbone_fpn
            assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_two_processes_filling_one_store_at_once(tmp_path, checkpoint):
    """One ``napari-sam2 embed`` and one scripted session fill the same store together."""
    from napari_sam2.models.checkpoints import load_model

    stack = tmp_path / "cells.tif"
    tifffile.imwrite(stack, cell_stack(8), photometric="minisblack")
    store = tmp_path / "cells.zarr"
    embed = subprocess.Popen(
        [sys.executable, "-m", "napari_sam2.cli", "embed", str(stack), "--out", str(store),
         "--model", str(checkpoint), "--config", CONFIG, "--image-size", str(SIZE),
         "--precision", "fp32", "--device", "cpu", "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    model = load_model(checkpoint, config=CONFIG, image_size=SIZE, video=True, device="cpu",
                       precision="fp32")
    predictor = SAM2VideoPredictor(model, store=store)
    with predictor.init_state(str(stack)) as state:
        mine = _encoded_frames(model, predictor, state)
    out, err = embed.communicate(timeout=300)
    assert embed.returncode == 0, err
    assert "8/8 frames stored" in err
    calls = record_encodings(model)
    fresh = SAM2VideoPredictor(model, store=False)
    with predictor.init_state(str(stack)) as stored, fresh.init_state(str(stack)) as computed:
        assert stored.store.complete().all()
        for t in range(8):
            a = predictor.encoder.features(stored, t).backbone_fpn
            b = fresh.encoder.features(computed, t).backbone_fpn
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(calls) == 8  # only the store-less comparison encoded
    assert len(mine) <= 8


def test_explicit_normalization_record_is_part_of_the_key(tmp_path, model):
    predictor = SAM2VideoPredictor(model, store=tmp_path / "s.zarr")
    norm = Normalization(mode="limits", contrast_limits=((100.0, 3500.0),))
    with predictor.init_state(cell_stack(2), normalization=norm) as state:
        recorded = state.store.store.key.normalization
    assert recorded["contrast_limits"] == [[100.0, 3500.0]] and recorded["resolved"]
