"""The ``napari-sam2`` command line, run as a subprocess like a user would (plus a few in-process
calls where a subprocess cannot be steered: downloads, runtime failures).

Prompt files are written by napari's own Points / Shapes writers. The model is a tiny
random-weight checkpoint at image size 256, so masks carry no meaning: the tracked labels are
compared with the Python API run in-process on the same weights."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2._sample_data import make_timelapse
from napari_sam2.cli import track as track_command
from napari_sam2.cli.main import build_parser
from napari_sam2.cli.model_options import load_model

CONFIG, SIZE = "sam2.1_hiera_t", 256
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_sam2.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **env},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("napari-sam2"), errors
    assert message in errors[0], errors[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def checkpoint(official_checkpoint) -> Path:
    return official_checkpoint(CONFIG, SIZE)


@pytest.fixture(scope="module")
def napari_layers():
    napari = pytest.importorskip("napari")
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    return napari.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory, napari_layers) -> dict[str, Path]:
    """A 4×64×64 uint16 TIFF, a Points CSV (object 5 on frame 2, a positive and a negative
    click) and a Shapes CSV (one rectangle on frame 0), saved by napari."""
    root = tmp_path_factory.mktemp("cli")
    stack = np.ascontiguousarray(make_timelapse()[:4, 32:96, 32:96])
    tifffile.imwrite(root / "stack.tif", stack, imagej=True, metadata={"axes": "TYX"})
    points = napari_layers.Points(
        np.array([[2, 32, 32], [2, 5, 60]], float),
        features={"obj_id": [5, 5], "positive": [True, False]},
    )
    points.save(str(root / "points.csv"))
    box = np.array([[0, 40, 0], [0, 40, 20], [0, 63, 20], [0, 63, 0]], float)
    napari_layers.Shapes([box], shape_type="rectangle").save(str(root / "boxes.csv"))
    napari_layers.Points(np.array([[32.0, 32.0], [40.0, 10.0]]),
                         features={"obj_id": [1, 3]}).save(str(root / "points2d.csv"))
    tifffile.imwrite(root / "image.tif", stack[0])
    tifffile.imwrite(root / "long.tif", make_timelapse()[:8, :64, :64], photometric="minisblack")
    return {p.stem: p for p in root.iterdir()}


def test_track_end_to_end(tmp_path: Path, files, checkpoint) -> None:
    out = tmp_path / "labels.tif"
    result = run_cli(
        "track", files["stack"], "--points", files["points"], "--boxes", files["boxes"],
        "--out", out, "--model", checkpoint, "--image-size", SIZE, "--device", "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stderr
    assert leftovers(tmp_path) == []
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TYX"
        labels = tif.asarray()
    assert labels.shape == (4, 64, 64) and labels.dtype == np.uint16

    # The same run in-process, through the Python API.
    from napari_sam2 import api
    from napari_sam2.core.annotations import (
        merge_prompts,
        prompts_from_boxes,
        prompts_from_points,
    )
    from napari_sam2.core.annotations.napari_csv import read_points_csv, read_shapes_csv
    from napari_sam2.models.checkpoints import load_model

    coords, positive, ids = read_points_csv(files["points"])
    rects, box_ids = read_shapes_csv(files["boxes"])
    prompts = merge_prompts(prompts_from_points(coords, positive, ids, frame_axis=0),
                            prompts_from_boxes(rects, box_ids, frame_axis=0))
    assert [(p.frame_idx, p.obj_id) for p in prompts] == [(0, 1), (2, 5)]
    model = load_model(checkpoint, device="cpu", image_size=SIZE, video=True)
    expected = api.track(tifffile.imread(files["stack"]), prompts, model=model)
    np.testing.assert_array_equal(labels, expected)
    # With these weights both objects are visible on their prompted frames (random-weight
    # masks are large and overlap, so the clicked pixel itself may go to the other object).
    assert (labels[2] == 5).any() and (labels[0] == 1).any()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_tracking_leaves_no_output(tmp_path: Path, checkpoint, sig, code) -> None:
    # long enough that the run is still tracking when the signal comes, however fast the
    # machine and whatever the embedding store already holds
    stack = np.repeat(make_timelapse()[:1, 32:96, 32:96], 2000, axis=0)
    tifffile.imwrite(tmp_path / "long.tif", stack, photometric="minisblack")
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,axis-2\n0,0,32,32\n")
    out = tmp_path / "labels.tif"
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_sam2.cli", "track", tmp_path / "long.tif", "--points",
         tmp_path / "p.csv", "--out", out, "--model", checkpoint, "--image-size", str(SIZE),
         "--device", "cpu"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT,
        # as from a terminal: a test run started in the background by a script inherits an
        # ignored SIGINT, and Python then never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = bytearray()
    started = threading.Event()

    def read() -> None:
        while chunk := proc.stderr.read1(1024):
            seen.extend(chunk)
            if b"tracking:" in seen:  # the progress bar is drawn: frames are being tracked
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(180), seen.decode(errors="replace")
        runs = Path(os.environ["NAPARI_SAM2_CACHE"]) / "runs"
        assert list(runs.glob("*/labels.tif"))  # the labels being written, in the cache
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    text = seen.decode(errors="replace")
    assert "Traceback" not in text
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert "--resume to continue" in text  # what was tracked is kept for --resume


def test_segment_with_points_and_everything(tmp_path: Path, files, checkpoint) -> None:
    from napari_sam2 import api
    from napari_sam2.core.image.predictor import SAM2ImagePredictor
    from napari_sam2.models.checkpoints import load_model

    image = tifffile.imread(files["image"])
    model = load_model(checkpoint, device="cpu", image_size=SIZE)
    common = ["--model", checkpoint, "--image-size", SIZE, "--device", "cpu"]

    out = tmp_path / "mask.tif"
    result = run_cli("segment", files["image"], "--points", files["points2d"], "--out", out,
                     *common)
    assert result.returncode == 0, result.stderr
    labels = tifffile.imread(out)
    assert labels.shape == image.shape and labels.dtype == np.uint16
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(image)
    logits = [predictor.predict(np.array([xy]), np.array([1]), multimask_output=False,
                                return_logits=True)[0][0] for xy in ([32, 32], [10, 40])]
    np.testing.assert_array_equal(labels, api.labels_from_logits([1, 3], np.stack(logits)))

    out = tmp_path / "auto.tif"
    result = run_cli("segment", files["image"], "--auto", "--points-per-side", 4,
                     "--pred-iou-thresh", 0, "--stability-score-thresh", 0, "--out", out, *common)
    assert result.returncode == 0, result.stderr
    expected = api.segment_everything(image, model=model, points_per_side=4,
                                      pred_iou_thresh=0, stability_score_thresh=0)
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert leftovers(tmp_path) == []


def _bad_input_cases(tmp: Path, files: dict[str, Path], checkpoint: Path):
    """(arguments, message) pairs that must fail with exit status 2. Every command names a
    local checkpoint (a later --model overrides it), so none can reach for the network."""
    stack, points = files["stack"], files["points"]
    out = tmp / "labels.tif"
    model = ["--model", checkpoint, "--image-size", SIZE, "--device", "cpu"]
    track, segment = ["track", *model], ["segment", *model]
    (tmp / "axes.csv").write_text("index,x,y\n0,1,2\n")
    (tmp / "outside.csv").write_text("index,axis-0,axis-1,axis-2\n0,1,32,100\n")
    (tmp / "late.csv").write_text("index,axis-0,axis-1,axis-2\n0,7,32,32\n")
    (tmp / "flat.csv").write_text("index,axis-0,axis-1\n0,32,32\n")
    (tmp / "ellipse.csv").write_text(
        "index,shape-type,vertex-index,axis-0,axis-1,axis-2\n"
        + "".join(f"0,ellipse,{i},0,{i},{i}\n" for i in range(4))
    )
    (tmp / "not-a-tiff.tif").write_bytes(b"no image here")
    (tmp / "broken.pt").write_bytes(b"not a checkpoint")
    (tmp / "exists.tif").write_bytes(b"keep me")
    (tmp / "a-file").write_text("")
    return [
        ([*track, tmp / "missing.tif", "--points", points, "--out", out],
         "stack " + str(tmp / "missing.tif") + " does not exist"),
        ([*track, stack, "--points", tmp / "missing.csv", "--out", out],
         "points file " + str(tmp / "missing.csv") + " does not exist"),
        ([*track, stack, "--points", tmp / "axes.csv", "--out", out], "no axis-0, axis-1"),
        ([*track, stack, "--points", tmp / "outside.csv", "--out", out],
         "point (x, y) = (100, 32) of object 1 on frame 1 is outside the image (64 × 64 pixels)"),
        ([*track, stack, "--points", tmp / "late.csv", "--out", out],
         "is on frame 7, outside the stack (frames 0..3)"),
        ([*track, stack, "--points", tmp / "flat.csv", "--out", out], "needs a frame coordinate"),
        ([*track, stack, "--boxes", tmp / "ellipse.csv", "--out", out], "only rectangles"),
        ([*track, tmp / "not-a-tiff.tif", "--points", points, "--out", out], "not-a-tiff.tif"),
        ([*track, stack, "--points", points, "--out", out, "--model", "sam3_hiera_huge"],
         "unknown model 'sam3_hiera_huge'"),
        ([*track, stack, "--points", points, "--out", out, "--model", tmp / "none.pt"],
         "checkpoint file " + str(tmp / "none.pt") + " does not exist"),
        ([*track, stack, "--points", points, "--out", out, "--model", tmp / "broken.pt"],
         str(tmp / "broken.pt")),
        ([*track, stack, "--points", points, "--out", tmp / "no" / "dir" / "labels.tif"],
         "directory " + str(tmp / "no" / "dir") + " does not exist"),
        ([*track, stack, "--points", points, "--out", tmp / "a-file" / "labels.tif"],
         str(tmp / "a-file") + " is not a directory"),
        ([*track, stack, "--points", points, "--out", tmp / "exists.tif"],
         "already exists; pass --overwrite"),
        ([*track, stack, "--points", points, "--out", tmp / "labels.png"], ".tif or .tiff"),
        ([*track, stack, "--points", points, "--out", out, "--range", "3:1"],
         "--range 3:1 is not within"),
        ([*track, stack, "--points", points, "--out", out, "--range", "3:4"],
         "no prompt lies within --range 3:4"),
        ([*track, stack, "--out", out], "--points POINTS.csv and/or --boxes"),
        ([*segment, files["image"], "--points", points, "--out", out],
         "the points have 3 coordinates, but the image is 2D"),
        ([*segment, files["long"], "--auto", "--out", out], "for a stack use 'napari-sam2 track'"),
        (["download", "sam3_hiera_huge"], "unknown model 'sam3_hiera_huge'"),
    ]


def test_bad_input_fails_with_one_line_and_status_2(tmp_path: Path, files, checkpoint) -> None:
    failures = []
    for args, message in _bad_input_cases(tmp_path, files, checkpoint):
        result = run_cli(*args)
        try:
            assert_one_line_error(result, 2, message)
        except AssertionError as err:
            failures.append(f"{' '.join(map(str, args))}:\n  {err}\n  stderr: {result.stderr}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "labels.tif").exists()
    assert (tmp_path / "exists.tif").read_bytes() == b"keep me"
    assert leftovers(tmp_path) == []


def test_usage_errors_are_argparse_style() -> None:
    result = run_cli("track")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "napari-sam2 track: error: the following arguments are required" in result.stderr
    result = run_cli("track", "s.tif", "--points", "p.csv", "--out", "o.tif",
                     "--direction", "up")
    assert result.returncode == 2 and "invalid choice: 'up'" in result.stderr
    result = run_cli("track", "s.tif", "--points", "p.csv", "--out", "o.tif",
                     "--precision", "half")
    assert result.returncode == 2 and "invalid choice: 'half'" in result.stderr


def test_precision_reaches_the_loaded_model(monkeypatch) -> None:
    seen = {}

    def fake_load_model(*args, **kwargs):
        seen.update(kwargs)
        return "model"

    monkeypatch.setattr("napari_sam2.models.checkpoints.load_model", fake_load_model)
    parser = build_parser()
    args = parser.parse_args(["track", "s.tif", "--points", "p.csv", "--out", "o.tif",
                              "--device", "cpu", "--precision", "bf16", "-q"])
    assert load_model(args, video=True) == "model" and seen["precision"] == "bf16"
    args = parser.parse_args(["segment", "i.tif", "--auto", "--out", "o.tif", "--device", "cpu"])
    load_model(args, video=False)
    assert seen["precision"] == "auto"  # the default


def test_runtime_failure_is_status_1_and_debug_shows_the_traceback(
    tmp_path: Path, files, monkeypatch, capsys
) -> None:
    import napari_sam2.api

    def failing_track(*args, **kwargs):
        raise RuntimeError("out of GPU memory\n(second line)")

    monkeypatch.setattr(track_command, "load_model", lambda args, video: object())
    monkeypatch.setattr(napari_sam2.api, "track", failing_track)
    argv = ["track", str(files["stack"]), "--points", str(files["points"]), "--out",
            str(tmp_path / "labels.tif"), "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "napari-sam2: error: out of GPU memory (second line)" in err
    assert "Traceback" not in err
    assert cli.main([*argv, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_models_lists_the_eight_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "sam2_hiera_small.pt").write_bytes(b"x")
    result = run_cli("models", NAPARI_SAM2_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("this machine: ") and "--precision auto on " in lines[-1]
    assert any(f"-> {mode}: " in lines[-1] for mode in ("bf16", "fast", "fp32"))
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    sizes = ("tiny", "small", "base_plus", "large")
    assert set(rows) == {f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in sizes}
    assert rows["sam2.1_hiera_tiny"][1:5] == ["sam2.1_hiera_t", "~149", "MB", "no"]
    assert rows["sam2_hiera_small"][4:] == ["yes", str(tmp_path / "sam2_hiera_small.pt")]
    assert str(tmp_path) in lines[0]


def test_download_fetches_verifies_and_prints_the_path(
    tmp_path: Path, checkpoint, monkeypatch, capsys
) -> None:
    from napari_sam2.models import checkpoints

    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(cache))
    info = checkpoints.REGISTRY["sam2.1_hiera_tiny"]
    source = tmp_path / "server" / info.filename
    source.parent.mkdir()
    source.write_bytes(checkpoint.read_bytes())
    # the random test weights stand for the official file: unpinned here, so that the
    # structural check below is what refuses the bad file (the digest pin is tested with
    # the downloader)
    monkeypatch.setitem(checkpoints.REGISTRY, info.name,
                        dataclasses.replace(info, url=source.as_uri(), sha256=None, size=None))
    assert cli.main(["download", "sam2.1_hiera_tiny", "-q"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == cache / info.filename
    assert path.read_bytes() == checkpoint.read_bytes()

    # A file that is not a checkpoint is refused and removed.
    source.write_bytes(b"<html>not found</html>")
    path.unlink()
    assert cli.main(["download", "sam2.1_hiera_tiny", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"napari-sam2: error: {path}") and "The file was removed" in err
    assert not path.exists()


def test_console_script_is_registered() -> None:
    from importlib.metadata import entry_points

    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "napari-sam2"]
    assert scripts, "reinstall the package (pip install -e .) to register the napari-sam2 script"
    assert scripts[0].value == "napari_sam2.cli:main"


def test_demo_opens_the_viewer_with_the_widget_and_a_local_model(checkpoint) -> None:
    result = run_cli("demo", "--model", checkpoint, "--image-size", SIZE, "--device", "cpu",
                     NAPARI_SAM2_DEMO_NO_RUN="1", timeout=180)
    assert result.returncode == 0, result.stderr
    assert "demo ready: layers [SAM2 time-lapse" in result.stderr
    assert "dock widget SAM2Widget" in result.stderr
    assert f"model {checkpoint} loaded" in result.stderr
    assert "Traceback" not in result.stderr
