"""Cancel at every stage of a job: before its worker starts, while it encodes its first frame,
mid-way, on the way back of a "both" run, and after the last frame. Each time the run ends
reporting "not completed" (or "completed" when nothing was left to stop), the Labels layer
holds exactly the frames delivered before the cancel plus the user's own labels, and the next
run goes through to the end."""

from __future__ import annotations

import numpy as np
import pytest

from tests.widgets.conftest import blob_stack, wait_idle

N = 10
START = 4  # the prompted frame: "both" runs forward from here, then back to 0


def _tracked(layer) -> list[int]:
    data = np.asarray(layer.data)
    return [t for t in range(N) if (data[t] == 1).any()]


STAGES = ["queued", "first frame", "mid-way", "backward", "after the last frame"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_propagation_cancelled_at_each_stage_keeps_what_it_delivered(stage, loaded, qtbot):
    viewer, widget = loaded(blob_stack(N))
    c = widget.controller
    widget.add_point((START, 30, 25))
    wait_idle(qtbot, widget)
    labels = widget.labels_layer
    labels.data[N - 1, :3, :3] = 7  # the user's own label
    delivered: list[int] = []
    notices: list[str] = []
    c.notice.connect(lambda level, text: notices.append(text))

    def on_frame(frame_idx: int) -> None:
        delivered.append(frame_idx)
        if stage == "mid-way" and len(delivered) == 2:
            widget.cancel()
        if stage == "backward" and frame_idx < START:
            widget.cancel()

    c.frame_propagated.connect(on_frame)
    if stage == "first frame":
        c.propagation_started.connect(widget.cancel)
    with qtbot.waitSignal(widget.propagation_finished, timeout=240_000) as done:
        widget.propagate("both")
        if stage == "queued":
            widget.cancel()  # before the queue has started its worker
    if stage == "after the last frame":
        widget.cancel()  # nothing is running any more: a no-op
    wait_idle(qtbot, widget)
    assert not widget.is_running and not c.jobs.busy
    assert done.args == [stage == "after the last frame"]
    written = sorted({START, *delivered})  # the prompted frame has its mask from the click
    assert _tracked(labels) == written
    if stage == "queued":
        assert delivered == []
    elif stage == "mid-way":
        assert len(delivered) == 2
    elif stage == "backward":
        assert delivered[-1] < START and len(delivered) < N  # the run stopped on its way back
    assert (np.asarray(labels.data)[N - 1, :3, :3] == 7).all()
    assert not any("failed" in n.lower() for n in notices), notices

    c.frame_propagated.disconnect(on_frame)
    if stage == "first frame":
        c.propagation_started.disconnect(widget.cancel)
    with qtbot.waitSignal(widget.propagation_finished, timeout=240_000) as again:
        widget.propagate("both")
    assert again.args == [True]
    assert set(_tracked(labels)) >= set(range(N - 1))  # frame N-1 holds the user's label too
    assert (np.asarray(labels.data)[N - 1, :3, :3] == 7).all()


@pytest.mark.parametrize("stage", ["queued", "first slice"])
def test_precompute_cancelled_early_ends_cleanly_and_resumes(stage, loaded, qtbot):
    viewer, widget = loaded(blob_stack(6))
    c = widget.controller

    def first(done: int, total: int) -> None:
        if done >= 1:
            c.cancel_precompute()

    if stage == "first slice":
        c.precompute_progress.connect(first)
    with qtbot.waitSignal(c.precompute_running, timeout=120_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
        if stage == "queued":
            c.cancel_precompute()
    wait_idle(qtbot, widget)
    assert not widget.is_precomputing and not c.jobs.busy
    stored = int(widget.store_status.split("/")[0]) if "/" in widget.store_status else 0
    assert stored < 6
    if stage == "first slice":
        c.precompute_progress.disconnect(first)
    with qtbot.waitSignal(c.precompute_running, timeout=120_000,
                          check_params_cb=lambda running: not running):
        widget.precompute_embeddings()
    wait_idle(qtbot, widget)
    assert widget.store_status.startswith("6/6 slices encoded")
