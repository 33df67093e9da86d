"""The dock widget's controls drive its controller, and show what the controller holds."""

from __future__ import annotations

import pytest
from napari.utils.notifications import notification_manager

from .conftest import blob_stack, wait_idle


@pytest.fixture
def notifications():
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def test_buttons_and_settings_drive_the_controller(loaded, qtbot, notifications):
    viewer, widget = loaded(blob_stack(4))
    ui, controller = widget._ui, widget.controller
    with qtbot.waitSignal(widget.masks_updated, timeout=60_000):
        widget.add_point((0, 30, 20))

    ui.overwrite.setChecked(True)
    assert widget.overwrite and controller.overwrite
    widget.overwrite = False
    assert not ui.overwrite.isChecked()
    ui.new_object.click()
    assert widget.current_object == 2 == ui.object.value()
    ui.object.setValue(1)
    assert controller.current_object == 1
    ui.negative.click()
    assert controller.positive is False
    widget.positive = True
    assert not ui.negative.isChecked()
    ui.image_size.setCurrentText("512")
    assert controller.image_size == 512

    ui.limit.setChecked(True)
    ui.first.setValue(0)
    ui.last.setValue(1)
    written = []
    widget.frame_propagated.connect(written.append)
    with qtbot.waitSignal(widget.propagation_finished, timeout=120_000) as done:
        ui.forward.click()
        assert ui.cancel.isEnabled() and not ui.forward.isEnabled()
    assert done.args == [True] and written == [0, 1]
    assert not ui.cancel.isEnabled() and ui.forward.isEnabled()
    assert ui.progress.value() == ui.progress.maximum() == 2

    ui.points_per_side.setValue(2)
    assert controller.points_per_side == 2
    with qtbot.waitSignal(widget.everything_finished, timeout=120_000):
        ui.everything.click()

    before = widget.session
    ui.normalization.setCurrentIndex(1)  # frames scaled by percentiles: a new session
    assert controller.contrast_mode == "auto"
    wait_idle(qtbot, widget)
    assert widget.session is not None and widget.session is not before
    errors = [str(n.message) for n in notifications if n.severity >= "error"]
    assert not errors, errors
