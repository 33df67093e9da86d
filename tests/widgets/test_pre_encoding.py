"""Background pre-encoding of neighbouring slices and the precision choice, in the dock
widget: created and closed with the option, following the viewer's slice, paused for jobs;
precision applied to the loaded model and to models loaded later, deferred or refused while
the model is working."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import SIZE, blob_stack, wait_idle

WAIT = 60  # seconds


@pytest.fixture
def forward_calls(monkeypatch):
    """``count(widget)`` starts counting the loaded model's ``forward_image`` calls."""

    def count(widget) -> list[int]:
        calls: list[int] = []
        original = widget.model.forward_image
        monkeypatch.setattr(widget.model, "forward_image", lambda x: calls.append(1) or original(x))
        return calls

    return count


def _cached(widget) -> list[int]:
    return sorted(widget.session.state.feature_cache.keys())


def test_pre_encode_follows_the_slice_pauses_for_jobs_and_closes(loaded, qtbot, forward_calls):
    viewer, widget = loaded(blob_stack(6))
    viewer.dims.set_current_step(0, 0)
    wait_idle(qtbot, widget)
    calls = forward_calls(widget)
    assert not widget.pre_encode and widget.pre_encoder is None  # off by default

    widget._ui.pre_encode.setChecked(True)  # the checkbox
    pre = widget.pre_encoder
    assert widget.pre_encode and pre is not None and pre.focus_frame == 0
    assert pre.wait_idle(WAIT)
    assert _cached(widget) == [0, 1, 2] and pre.encoded == 3 and len(calls) == 3

    viewer.dims.set_current_step(0, 4)  # moving the slider refocuses on the new slice
    assert pre.focus_frame == 4 and pre.wait_idle(WAIT)
    assert {3, 4, 5} <= set(_cached(widget)) and pre.encoded == 6 and len(calls) == 6

    paused_while_busy = []
    widget.controller.jobs.busy_changed.connect(
        lambda busy: paused_while_busy.append((busy, pre.is_paused))
    )
    with qtbot.waitSignal(widget.masks_updated, timeout=WAIT * 1000):
        widget.add_point((4, 30, 25))
    wait_idle(qtbot, widget)
    assert len(calls) == 6  # the click reused the pre-encoded slice
    assert paused_while_busy[0] == (True, True) and paused_while_busy[-1] == (False, False)
    assert (np.asarray(widget.labels_layer.data)[4] == 1).any()

    widget.pre_encode = False  # the scripting property
    assert pre.closed and not pre.alive and widget.pre_encoder is None
    assert not widget._ui.pre_encode.isChecked()
    viewer.dims.set_current_step(0, 1)
    assert widget.pre_encoder is None and len(calls) == 6

    widget.pre_encode = True  # a new session (another image) closes the old encoder
    first = widget.pre_encoder
    assert first is not None and first is not pre and first.focus_frame == 1
    other = viewer.add_image(blob_stack(6, seed=1), name="other")
    widget.image_layer = other
    assert first.closed and not first.alive
    wait_idle(qtbot, widget)
    second = widget.pre_encoder
    assert second is not None and second.state is widget.session.state
    widget.shutdown()
    assert second.closed and not second.alive and widget.pre_encoder is None


def test_pre_encode_needs_a_stack(loaded, qtbot):
    _, widget = loaded(blob_stack(1)[0])  # a 2D image: nothing to pre-encode
    wait_idle(qtbot, widget)
    widget.pre_encode = True
    assert widget.session is not None and widget.pre_encoder is None


def test_precision_choice_applies_now_later_and_to_new_models(
    loaded, qtbot, widget_checkpoint, monkeypatch
):
    import napari_sam2.models.precision as precision

    applied = []
    original = precision.set_precision
    monkeypatch.setattr(
        precision, "set_precision", lambda m, mode: applied.append(mode) or original(m, mode)
    )
    viewer, widget = loaded(blob_stack(3))
    viewer.dims.set_current_step(0, 1)
    combo = widget._ui.precision
    from napari_sam2.models.precision_policy import resolve_precision

    auto = resolve_precision("auto", "cpu")
    assert widget.precision == "auto" and widget.model.precision == auto.mode  # the default
    assert combo.currentData() == "auto" and combo.count() == 4
    assert widget.precision_in_use == auto.describe() == widget._ui.precision_in_use.text()
    with qtbot.waitSignal(widget.masks_updated, timeout=WAIT * 1000):
        widget.add_point((1, 30, 25))
    wait_idle(qtbot, widget)
    assert len(widget.session.state.feature_cache) == 1

    applied.clear()
    combo.setCurrentIndex(combo.findData("bf16"))  # the combo
    assert applied == ["bf16"] and widget.model.precision == "bf16" == widget.precision
    assert widget._ui.precision_in_use.text() == "bf16: chosen explicitly"
    assert len(widget.session.state.feature_cache) == 0  # features of the old precision dropped

    widget.pre_encode = True
    pre = widget.pre_encoder
    assert pre.wait_idle(WAIT) and _cached(widget) == [0, 1, 2]
    widget.precision = "fp32"  # the property; the pre-encoder starts again under it
    assert widget.model.precision == "fp32" and combo.currentData() == "fp32"
    assert pre.closed and widget.pre_encoder is not pre
    assert widget.pre_encoder.wait_idle(WAIT) and _cached(widget) == [0, 1, 2]
    with pytest.raises(ValueError, match="precision"):
        widget.precision = "half"

    widget.add_point((1, 5, 5))
    widget.controller.sync()  # the prediction job starts now: the change waits for it
    assert widget.controller.jobs.busy
    widget.precision = "fast"
    assert widget.model.precision == "fp32" and widget.precision == "fast"
    wait_idle(qtbot, widget)
    assert widget.model.precision == "fast"

    with qtbot.waitSignal(widget.propagation_finished, timeout=WAIT * 2000):
        widget.propagate("forward")
        assert not combo.isEnabled()
        with pytest.raises(RuntimeError, match="propagation"):
            widget.precision = "bf16"
    assert widget.precision == "fast" and combo.isEnabled()

    widget.precision = "bf16"
    applied.clear()
    with qtbot.waitSignal(widget.model_loaded, timeout=WAIT * 1000):
        widget.set_model(str(widget_checkpoint), device="cpu", image_size=SIZE)
    assert widget.model.precision == "bf16" and "bf16" in applied  # a model loaded later
    wait_idle(qtbot, widget)
