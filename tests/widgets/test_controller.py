"""The controller alone: a real viewer, no dock widget; a click and a propagation, seen
through the controller's signals."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QApplication, QWidget

from napari_sam2.widgets._controller import WidgetController
from napari_sam2.widgets._widget import SAM2Widget

from .conftest import SIZE, blob_stack


def test_controller_alone_segments_and_propagates(make_napari_viewer, widget_checkpoint, qtbot):
    viewer = make_napari_viewer()
    controller = WidgetController(viewer)
    assert not isinstance(controller, QWidget)
    status, progress, running, notices, defaults, failures = [], [], [], [], [], []
    layer_changes = []
    controller.status_changed.connect(status.append)
    controller.progress_changed.connect(lambda done, total: progress.append((done, total)))
    controller.running_changed.connect(running.append)
    controller.notice.connect(lambda level, text: notices.append((level, text)))
    controller.prompt_defaults_changed.connect(lambda obj, pos: defaults.append((obj, pos)))
    controller.failed.connect(lambda context, err: failures.append((context, err)))
    controller.layers_changed.connect(lambda: layer_changes.append(1))

    image = viewer.add_image(blob_stack(3), name="cells")  # the first image is taken
    assert controller.image_layer is image and layer_changes
    viewer.dims.set_current_step(0, 0)
    assert controller.frame_axis == 0 and controller.current_frame() == 0
    controller.add_point((0, 30, 25))  # no model yet: prompt layers and a hint
    qtbot.waitUntil(lambda: bool(notices), timeout=5_000)
    assert notices[0][0] == "info" and "Load a model" in notices[0][1]
    assert controller.points_layer.features["obj_id"].tolist() == [1]
    assert controller.labels_layer is None

    with qtbot.waitSignal(controller.masks_updated, timeout=60_000) as updated:
        with qtbot.waitSignal(controller.model_loaded, timeout=60_000):
            controller.set_model(str(widget_checkpoint), device="cpu", image_size=SIZE)
    assert updated.args == [0]  # the click made before the model, segmented once it loaded
    assert status[0].startswith("loading") and status[-1].endswith(f"on cpu ({SIZE} px)")
    assert controller.status == status[-1]
    labels = controller.labels_layer
    assert labels in viewer.layers and (np.asarray(labels.data)[0] == 1).any()
    assert not np.asarray(labels.data)[1:].any()

    assert controller.new_object() == 2 and defaults[-1] == (2, True)
    assert labels.selected_label == 2
    controller.positive = False
    assert defaults[-1] == (2, False)
    assert controller.points_layer.feature_defaults["positive"].iloc[0] == np.False_
    controller.current_object, controller.positive = 1, True

    with qtbot.waitSignal(controller.propagation_finished, timeout=120_000) as done:
        controller.propagate("forward")
        assert running == [True] and controller.is_running
        expected = progress[0][1]
        assert progress == [(0, expected)] and expected > 0
    assert done.args == [True] and running == [True, False] and not controller.is_running
    assert progress[-1] == (expected, expected)
    assert all((np.asarray(labels.data)[t] == 1).any() for t in range(3))
    assert not failures
    assert not any(isinstance(w, SAM2Widget) for w in QApplication.allWidgets())

    controller.shutdown()
    assert not controller.alive
    viewer.layers.remove(image)  # no longer followed
    assert controller.image_layer is image
