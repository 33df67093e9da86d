"""The widget's "Precompute embeddings": every slice to disk, the status line, cancel and
resume, and clicks that reuse the stored features."""

from __future__ import annotations

from pathlib import Path

from .conftest import CONFIG, SIZE, blob_stack, wait_idle


def test_precompute_fills_the_store_and_reports_it(loaded, qtbot):
    viewer, widget = loaded(blob_stack(6))
    with qtbot.waitSignal(widget.controller.precompute_running, timeout=120_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
    wait_idle(qtbot, widget)
    assert widget.store_status.startswith("6/6 slices encoded (cache: ")
    assert widget._ui.store_status.text() == widget.store_status
    assert widget._ui.precompute.isEnabled() and not widget._ui.precompute_cancel.isEnabled()
    # a click afterwards encodes nothing
    session = widget.controller.session
    calls = []
    model = session.predictor.model
    original = model.forward_image
    model.forward_image = lambda x: calls.append(1) or original(x)
    widget.add_point((3, 30, 25))
    wait_idle(qtbot, widget)
    assert calls == [] and widget.labels_layer.data[3].any()


def test_cancelled_precompute_resumes_where_it_stopped(loaded, qtbot):
    viewer, widget = loaded(blob_stack(8))
    c = widget.controller
    steps = []

    def step(done, total):
        steps.append(done)
        if done == 2:
            c.cancel_precompute()

    c.precompute_progress.connect(step)
    with qtbot.waitSignal(c.precompute_running, timeout=120_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
    wait_idle(qtbot, widget)
    done = int(widget.store_status.split("/")[0])
    assert 2 <= done < 8
    c.precompute_progress.disconnect(step)
    with qtbot.waitSignal(c.precompute_running, timeout=120_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
    wait_idle(qtbot, widget)
    assert widget.store_status.startswith("8/8 slices encoded")


def _embed_command(path, checkpoint) -> list[str]:
    import sys

    return [sys.executable, "-m", "napari_sam2.cli", "embed", str(path), "--model",
            str(checkpoint), "--config", CONFIG, "--image-size", str(SIZE), "--device", "cpu"]


def _count_encodings(widget) -> list[int]:
    calls: list[int] = []
    model = widget.controller.model
    original = model.forward_image
    model.forward_image = lambda x: calls.append(1) or original(x)
    return calls


def test_a_stack_embedded_on_the_command_line_opens_encoded(loaded, qtbot, tmp_path,
                                                            widget_checkpoint):
    import subprocess

    import tifffile

    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, blob_stack(5), photometric="minisblack")
    done = subprocess.run(_embed_command(path, widget_checkpoint), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "5/5 frames stored" in done.stderr, done.stderr
    # the same file opened in napari is an array: it finds the store by its pixels
    viewer, widget = loaded(tifffile.imread(path))
    widget.add_point((1, 30, 27))  # with the layer's contrast limits: other features
    wait_idle(qtbot, widget)
    assert widget.store_status.startswith("1/5 slices encoded")
    assert widget.store_status.endswith("; 5 stored with another contrast")
    widget.controller.contrast_mode = "auto"  # the stack's percentiles, as on the command line
    calls = _count_encodings(widget)
    with qtbot.waitSignal(widget.controller.precompute_running, timeout=120_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
    wait_idle(qtbot, widget)
    assert widget.store_status.startswith("5/5 slices encoded")
    widget.add_point((2, 30, 27))
    wait_idle(qtbot, widget)
    assert calls == [] and widget.labels_layer.data[2].any()


def test_widget_and_command_line_fill_one_store_at_once(loaded, qtbot, tmp_path,
                                                        widget_checkpoint, monkeypatch):
    import os
    import subprocess

    import tifffile

    n = 14
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, blob_stack(n), photometric="minisblack")
    viewer, widget = loaded(tifffile.imread(path))
    widget.controller.contrast_mode = "auto"
    root = os.environ["NAPARI_SAM2_EMBEDDINGS"]
    embed = subprocess.Popen(_embed_command(path, widget_checkpoint), stderr=subprocess.PIPE,
                             text=True)
    try:
        # start the widget's run once the command has stored its first frame
        qtbot.waitUntil(lambda: any(p.parent.name == "c" and p.parent.parent.name ==
                                    "signature" for p in Path(root).rglob("*")), timeout=120_000)
        with qtbot.waitSignal(widget.controller.precompute_running, timeout=240_000,
                              check_params_cb=lambda running: not running):
            widget.precompute_embeddings()
        _, err = embed.communicate(timeout=300)
    finally:
        embed.kill() if embed.poll() is None else None
    assert embed.returncode == 0, err
    assert f"{n}/{n} frames stored" in err
    wait_idle(qtbot, widget)
    assert widget.store_status.startswith(f"{n}/{n} slices encoded")
    # every frame is stored once and valid: nothing is encoded again, here or there
    calls = _count_encodings(widget)
    widget.add_point((n - 1, 30, 27 + n))
    wait_idle(qtbot, widget)
    again = subprocess.run(_embed_command(path, widget_checkpoint), capture_output=True,
                           text=True, timeout=300)
    assert calls == [] and widget.labels_layer.data[n - 1].any()
    assert f"0 encoded now, {n} already stored" in again.stderr, again.stderr
    assert not list(Path(root).rglob("*.partial"))
