"""A full disk while tracking results are spilled, or while the command line writes its
labels: a clear message, nothing half-written presented as complete, frames already delivered
kept. (A full disk while writing the embedding store: tests/core/store.)"""

from __future__ import annotations

import errno

import numpy as np
import pytest
import tifffile

from tests.cli.test_cli import CONFIG, SIZE


def test_a_full_disk_while_spilling_stops_with_a_clear_message(monkeypatch):
    from napari_sam2.core.video import spill
    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    from tests.core.store.conftest import cell_stack, tiny_model

    def full(self, out, slot):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill.SpillFile, "write", full)
    predictor = SAM2VideoPredictor(tiny_model(), ram_window=2, store=False)
    delivered = []
    with predictor.init_state(cell_stack(8)) as state:
        predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[1])
        with pytest.raises(OSError) as info:
            for frame_idx, _, masks in predictor.propagate_in_video(state):
                delivered.append((frame_idx, masks.clone()))
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "cannot keep tracking results on disk" in message and "No space left" in message
    assert "spill_dir" in message and "TMPDIR" in message
    assert len(delivered) >= 2 and [f for f, _ in delivered] == list(range(len(delivered)))


def test_a_spill_folder_that_cannot_be_written_is_named(tmp_path):
    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    from tests.core.store.conftest import cell_stack, tiny_model

    # a folder that cannot be made (a read-only one would not stop root, who runs CI)
    missing = tmp_path / "a file"
    missing.write_text("")
    missing = missing / "spill"
    predictor = SAM2VideoPredictor(tiny_model(), ram_window=2, store=False,
                                   spill_dir=str(missing))
    with predictor.init_state(cell_stack(6)) as state:
        predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[1])
        with pytest.raises(OSError) as info:
            list(predictor.propagate_in_video(state))
    assert str(missing) in str(info.value) and "spill_dir" in str(info.value)


def test_track_on_a_full_disk_exits_2_and_leaves_nothing(tmp_path, official_checkpoint,
                                                         monkeypatch, capsys):
    import os

    from napari_sam2.cli.main import main

    stack = np.random.default_rng(0).integers(0, 4000, (4, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,axis-2\n0,0,30,30\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(cache))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "labels.tif"
    code = main(["track", str(tmp_path / "stack.tif"), "--points", str(tmp_path / "p.csv"),
                 "--out", str(out), "--model", str(official_checkpoint(CONFIG, SIZE)),
                 "--config", CONFIG, "--image-size", str(SIZE), "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "No space left on device" in err and "NAPARI_SAM2_CACHE" in err
    assert "Traceback" not in err
    assert not out.exists() and list((cache / "runs").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "p.csv", "stack.tif"]
