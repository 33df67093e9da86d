"""A full or read-only disk while tracking results are spilled, or while the command line
writes its labels: a clear message, nothing half-written presented as complete, frames already
delivered kept (and finished with ``--resume``). A read-only folder is injected (the kernel's
answer for a read-only mount), as CI runs as root, whom ``chmod`` does not stop. (The
embedding store on such a disk: tests/core/store.)"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.cli.test_cli import CONFIG, SIZE


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_while_spilling_stops_with_a_clear_message(code, monkeypatch):
    from napari_sam2.core.video import spill
    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    from tests.core.store.conftest import cell_stack, tiny_model

    def full(self, out, slot):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(spill.SpillFile, "write", full)
    predictor = SAM2VideoPredictor(tiny_model(), ram_window=2, store=False)
    delivered = []
    with predictor.init_state(cell_stack(8)) as state:
        predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[1])
        with pytest.raises(OSError) as info:
            for frame_idx, _, masks in predictor.propagate_in_video(state):
                delivered.append((frame_idx, masks.clone()))
    message = str(info.value)
    assert info.value.errno == code
    assert "cannot keep tracking results on disk" in message and os.strerror(code) in message
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


def _track_args(tmp_path, official_checkpoint, out) -> list[str]:
    stack = np.random.default_rng(0).integers(0, 4000, (4, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,axis-2\n0,0,30,30\n")
    return ["track", str(tmp_path / "stack.tif"), "--points", str(tmp_path / "p.csv"),
            "--out", str(out), "--model", str(official_checkpoint(CONFIG, SIZE)),
            "--config", CONFIG, "--image-size", str(SIZE), "--device", "cpu", "-q"]


def test_track_into_a_read_only_folder_is_refused_before_any_work(tmp_path, official_checkpoint,
                                                                   monkeypatch, capsys):
    from napari_sam2.cli.main import main
    from napari_sam2.models import checkpoints

    folder = tmp_path / "mounted read-only"
    folder.mkdir()
    out = folder / "labels.tif"
    args = _track_args(tmp_path, official_checkpoint, out)
    real_access = os.access
    # a read-only mount, as the kernel reports it even to root (chmod does not stop root)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (
        Path(p) == folder and mode & os.W_OK) else real_access(p, mode, **kw))
    loads = []
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: loads.append(1))
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"the folder {folder} is read-only" in err and loads == []
    assert list(folder.iterdir()) == []


def test_track_whose_output_folder_turns_read_only_keeps_the_frames_for_resume(
        tmp_path, official_checkpoint, monkeypatch, capsys):
    import tempfile

    from napari_sam2.cli.main import main

    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(cache))
    out = tmp_path / "labels.tif"
    args = _track_args(tmp_path, official_checkpoint, out)
    real_mkstemp, real_replace = tempfile.mkstemp, os.replace

    def refused(*a, **k):  # the output folder was remounted read-only mid-run
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def replace(src, dst, *a, **k):
        if Path(dst) == out:
            refused()
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: refused() if Path(
        k.get("dir", "")) == tmp_path else real_mkstemp(*a, **k))
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert os.strerror(errno.EROFS) in err and "--resume" in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".labels.tif")]
    monkeypatch.undo()
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(cache))
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    assert tifffile.imread(out).shape == (4, 64, 64) and tifffile.imread(out)[0].any()
