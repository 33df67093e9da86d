"""Run by the fault tests in a process of its own: dock the widget in a real napari viewer,
load a model, click an object, start a job and close the viewer part-way. A clean run prints
``CLOSED <job>`` and ``DONE`` and exits 0 (no traceback, no abort).

    python close_during_run.py CHECKPOINT JOB

JOB is one of load, click, propagate, precompute, everything, preencode.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main(checkpoint: str, job: str) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    rng = np.random.default_rng(0)
    data = rng.integers(100, 400, (16, 64, 64)).astype(np.uint16)
    for t in range(16):
        data[t, 20:40, 15 + t : 35 + t] += 2000
    viewer = napari.Viewer(show=True)
    viewer.add_image(data, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 Segmentation")
    app = QApplication.instance()
    controller = widget.controller
    closed = []

    def close(*_):
        if not closed:
            closed.append(job)
            print("CLOSED", job, flush=True)
            viewer.close()

    def wait(condition, seconds=120.0):
        end = time.monotonic() + seconds
        while not condition() and time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    loading = controller.set_model(checkpoint, device="cpu", image_size=256)
    if job == "load":
        loading.started.connect(close)
    else:
        wait(lambda: controller.model is not None)
        if job == "click":
            from qtpy.QtCore import QTimer

            controller.add_point((3, 30, 25))
            QTimer.singleShot(0, close)  # the click's prediction is queued or running
        else:
            from qtpy.QtCore import QTimer

            controller.add_point((3, 30, 25))
            wait(lambda: not controller.busy)
            if job == "propagate":
                controller.frame_propagated.connect(
                    lambda f, n=[0]: n.append(f) or (len(n) > 3 and close()))
                controller.propagate("both")
            elif job == "precompute":
                controller.precompute_progress.connect(lambda done, total: done >= 2 and close())
                controller.precompute_embeddings()
            elif job == "preencode":
                controller.pre_encode = True  # encodes the slices around the current one
                viewer.dims.set_current_step(0, 8)
                QTimer.singleShot(200, close)
            elif job == "everything":
                controller.segment_everything(points_per_side=4)
                controller.everything_finished.connect(close)  # as the labels are written
    wait(lambda: bool(closed))
    wait(lambda: not controller.jobs.busy)  # the job stops, its worker ends
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    print("DONE", "busy" if controller.jobs.busy else "idle", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
