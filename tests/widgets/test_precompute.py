"""The widget's "Precompute embeddings": every slice to disk, the status line, cancel and
resume, and clicks that reuse the stored features."""

from __future__ import annotations

from .conftest import blob_stack, wait_idle


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
