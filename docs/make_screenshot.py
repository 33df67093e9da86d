"""Make ``docs/screenshot.png``: the SAM 2 dock widget beside the sample time-lapse, segmented.

    xvfb-run -a python docs/make_screenshot.py                           # no weights needed
    xvfb-run -a python docs/make_screenshot.py --model sam2.1_hiera_tiny  # real SAM 2 masks

With ``--model`` the script does what a user does: it loads the model, clicks the dividing cell
and one of the moving cells on the first frame (two objects) and propagates them forward
through the stack. Without it -- no weights at hand, as on the machines this repository is
built on -- the masks shown are the sample's ground truth, written into the widget's Labels
layer, with the same clicks on the prompt layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _wait(signal, timeout_s: float) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(ys.mean()), float(xs.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="official model name or checkpoint file (optional)")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frame", type=int, default=12, help="frame clicked and shown")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("screenshot.png"))
    args = parser.parse_args()

    import napari
    from PIL import Image as PILImage
    from qtpy.QtWidgets import QApplication

    from napari_sam2._sample_data import DIVIDING_CELL, make_timelapse

    viewer = napari.Viewer(title="napari-sam2")
    viewer.window.resize(1600, 900)
    (image,) = viewer.open_sample("napari-sam2", "timelapse")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 Segmentation")
    _, truth = make_timelapse(return_labels=True)
    t = args.frame
    daughters = [truth[t] == DIVIDING_CELL, truth[t] == DIVIDING_CELL + 1]
    cells = {1: _centre(daughters[0]), 2: _centre(truth[t] == 1)}
    viewer.dims.set_current_step(0, t)

    if args.model:
        widget.set_model(args.model, image_size=args.image_size)
        _wait(widget.model_loaded, 1800)
        for obj_id, (y, x) in cells.items():
            widget.add_point((t, y, x), obj_id=obj_id)
        if daughters[1].any():
            widget.add_point((t, *_centre(daughters[1])), obj_id=1)
        widget.propagate("both")
        _wait(widget.propagation_finished, 3600)
    else:
        labels = viewer.add_labels(np.zeros(truth.shape, np.uint32), name=f"{image.name} masks")
        labels.data[truth == DIVIDING_CELL] = 1
        labels.data[truth == DIVIDING_CELL + 1] = 1
        labels.data[truth == 1] = 2
        labels.refresh()
        widget.labels_layer = labels
        widget.controller.hint_shown = True  # no "load a model" notification in the picture
        for obj_id, (y, x) in cells.items():
            widget.add_point((t, y, x), obj_id=obj_id)
        if daughters[1].any():
            widget.add_point((t, *_centre(daughters[1])), obj_id=1)
        widget.add_point((t, 20, 20), positive=False, obj_id=2)  # a negative click
        widget.current_object = 2

    viewer.layers.selection.active = widget.points_layer
    for _ in range(20):
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    rgb = PILImage.fromarray(np.asarray(shot)[..., :3])
    rgb.quantize(colors=128, method=PILImage.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    viewer.close()


if __name__ == "__main__":
    main()
