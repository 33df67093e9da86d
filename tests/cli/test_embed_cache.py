"""``napari-sam2 embed``, ``cache`` and ``track --store`` / ``--no-store``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from .test_cli import CONFIG, SIZE, assert_one_line_error, run_cli

MODEL = ("--config", CONFIG, "--image-size", str(SIZE), "--device", "cpu", "--precision",
         "fp32", "-q")


def _stack(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, rng.integers(0, 4000, (4, 64, 64)).astype(np.uint16),
                     photometric="minisblack")
    return path


def test_embed_resumes_lists_tracks_from_the_store_and_clears(tmp_path, official_checkpoint):
    ckpt = official_checkpoint(CONFIG, SIZE)
    stack = _stack(tmp_path)
    env = {"NAPARI_SAM2_EMBEDDINGS": str(tmp_path / "cache")}
    first = run_cli("embed", stack, "--model", ckpt, "--range", "1:3", *MODEL, **env)
    assert first.returncode == 0, first.stderr
    assert "2/4 frames stored" in first.stderr and "2 encoded now" in first.stderr
    second = run_cli("embed", stack, "--model", ckpt, *MODEL, **env)
    assert "4/4 frames stored" in second.stderr
    assert "2 encoded now, 2 already stored" in second.stderr  # resumed
    listing = run_cli("cache", **env)
    assert listing.returncode == 0 and "4/4" in listing.stdout and "stack.tif" in listing.stdout
    points = tmp_path / "points.csv"
    points.write_text("index,axis-0,axis-1,axis-2\n0,1,30,30\n")
    for store_args in ((), ("--no-store",)):
        out = tmp_path / f"labels{len(store_args)}.tif"
        result = run_cli("track", stack, "--points", points, "--out", out, "--model", ckpt,
                         *store_args, *MODEL, **env)
        assert result.returncode == 0, result.stderr
    assert np.array_equal(tifffile.imread(tmp_path / "labels0.tif"),
                          tifffile.imread(tmp_path / "labels1.tif"))
    cleared = run_cli("cache", "--clear", **env)
    assert "removed 1 stored feature set" in cleared.stdout
    assert "(none)" in run_cli("cache", **env).stdout


def test_embed_into_an_explicit_store_refuses_foreign_paths(tmp_path, official_checkpoint):
    ckpt = official_checkpoint(CONFIG, SIZE)
    stack = _stack(tmp_path)
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "keep.csv").write_text("precious")
    result = run_cli("embed", stack, "--out", foreign, "--model", ckpt, *MODEL)
    assert_one_line_error(result, 2, "not an embedding store")
    assert (foreign / "keep.csv").read_text() == "precious"
    result = run_cli("track", stack, "--points", foreign / "keep.csv", "--store", foreign,
                     "--no-store", "--out", tmp_path / "l.tif", "--model", ckpt, *MODEL)
    assert result.returncode == 2
    replaced = run_cli("embed", stack, "--out", foreign, "--overwrite", "--model", ckpt, *MODEL)
    assert replaced.returncode == 0, replaced.stderr
    meta = json.loads((foreign / "zarr.json").read_text())
    assert meta["attributes"]["napari_sam2"]["kind"] == "embedding-store"
    assert not (foreign / "keep.csv").exists()
    usage = run_cli("cache", "--older-than", "3")
    assert_one_line_error(usage, 2, "--older-than goes with --clear")
