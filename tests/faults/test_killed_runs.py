"""A ``napari-sam2 track`` killed with SIGKILL: the next start of any command removes what it
left (its spill folder, its records); ``--resume`` finishes the run with the labels of an
uninterrupted one; two runs never write one output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from tests.cli.test_cli import CONFIG, SIZE

N = 40


def _env(tmp_path: Path) -> dict[str, str]:
    for name in ("temp", "cache", "emb"):
        (tmp_path / name).mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp_path / "temp"),
            "NAPARI_SAM2_CACHE": str(tmp_path / "cache"),
            "NAPARI_SAM2_EMBEDDINGS": str(tmp_path / "emb")}


def _track(tmp_path: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "napari_sam2.cli", "track", str(tmp_path / "stack.tif"),
            "--points", str(tmp_path / "p.csv"), "--out", str(out), "--model", str(checkpoint),
            "--config", CONFIG, "--image-size", str(SIZE), "--device", "cpu",
            "--precision", "fp32", *extra]


def _ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "napari-sam2" in p.name
                  or p.name.endswith(".tmp"))


def test_kill_9_then_any_command_cleans_up_and_resume_finishes(tmp_path, official_checkpoint):
    checkpoint = official_checkpoint(CONFIG, SIZE)
    rng = np.random.default_rng(0)
    stack = rng.integers(100, 400, (N, 64, 64)).astype(np.uint16)
    for t in range(N):
        stack[t, 20:40, 10 + t // 2 : 30 + t // 2] += 3000
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,axis-2\n0,0,30,20\n")
    env, out, temp = _env(tmp_path), tmp_path / "out" / "labels.tif", tmp_path / "temp"
    out.parent.mkdir()
    proc = subprocess.Popen(_track(tmp_path, checkpoint, out, "-q"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 240
        while not any(p.name.startswith("napari-sam2-") for p in temp.iterdir()):
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
            time.sleep(0.05)  # spilled results: more than a RAM window of frames tracked
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _ours(temp) and not out.exists()  # what the killed run left
    runs = list((tmp_path / "cache" / "runs").glob("*/run.json"))
    assert len(runs) == 1
    # one start of any command removes it (the resumable labels stay in the cache)
    listing = subprocess.run([sys.executable, "-m", "napari_sam2.cli", "models"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert _ours(temp) == [] and _ours(out.parent) == []
    assert list((tmp_path / "cache" / "running").glob("*.json")) == []
    # --resume finishes the run; the result is an uninterrupted run's, pixel for pixel
    resumed = subprocess.run(_track(tmp_path, checkpoint, out, "--resume"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: the interrupted run had finished" in resumed.stderr
    assert "came out differently" not in resumed.stderr
    whole = tmp_path / "out" / "whole.tif"
    again = subprocess.run(_track(tmp_path, checkpoint, whole), env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(tifffile.imread(out), tifffile.imread(whole))
    assert (tifffile.imread(out)[N - 1] == 1).any()
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.tif", "whole.tif"]
    assert list((tmp_path / "cache" / "runs").iterdir()) == []
    assert _ours(temp) == []


def test_a_second_run_writing_the_same_output_is_refused(tmp_path, official_checkpoint):
    checkpoint = official_checkpoint(CONFIG, SIZE)
    stack = np.random.default_rng(1).integers(0, 4000, (300, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,axis-2\n0,0,30,30\n")
    env, out = _env(tmp_path), tmp_path / "labels.tif"
    first = subprocess.Popen(_track(tmp_path, checkpoint, out), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        runs = tmp_path / "cache" / "runs"
        end = time.monotonic() + 240
        while not list(runs.glob("*/run.json")) if runs.exists() else True:
            assert first.poll() is None and time.monotonic() < end
            time.sleep(0.05)
        second = subprocess.run(_track(tmp_path, checkpoint, out, "--direction", "forward"),
                                env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert "another napari-sam2 run is writing" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)
    assert not out.exists()
