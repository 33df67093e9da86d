"""PreEncoder: neighbours encoded nearest first in the background, reused by clicks with the
same results, pause / close / garbage collection, failures kept in the background, and the
single-flight feature cache underneath.

A tiny random-weight model at 256 px; the object-score bias is shifted so that masks are not
empty (as in tests/widgets/conftest.py). Threads are synchronised with events, never timed.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from napari_sam2.core.stacks.source import FrameReadError
from napari_sam2.core.video.feature_cache import FeatureCache
from napari_sam2.core.video.pre_encoder import PreEncoder, neighbour_order
from napari_sam2.core.video.predictor import SAM2VideoPredictor
from napari_sam2.models.build import build_model

WAIT = 120  # seconds; only reached if something hangs


@pytest.fixture(scope="module")
def predictor() -> SAM2VideoPredictor:
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_t", image_size=256, video=True)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 10.0
    return SAM2VideoPredictor(model, store=False)  # encoder calls counted: RAM only


@pytest.fixture
def calls(predictor, monkeypatch) -> list[str]:
    """Names of the threads that called ``model.forward_image``, one entry per call."""
    seen: list[str] = []
    original = predictor.model.forward_image

    def forward_image(x):
        seen.append(threading.current_thread().name)
        return original(x)

    monkeypatch.setattr(predictor.model, "forward_image", forward_image)
    return seen


def frames(n: int = 7, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
    for t in range(n):
        stack[t, 10:30, 8 + 2 * t : 28 + 2 * t] = 220
    return stack


class _Recorder:
    """Stands in for the predictor: records the frames the thread asks for, and can hold the
    thread inside a frame until ``release`` is set."""

    def __init__(self, predictor: SAM2VideoPredictor, hold: bool = False) -> None:
        self.predictor, self.order = predictor, []
        self.entered, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def encode_frame(self, state, frame_idx: int) -> None:
        self.order.append(frame_idx)
        self.entered.set()
        assert self.release.wait(WAIT)
        self.predictor.encode_frame(state, frame_idx)


class _FlakyStack:
    """A uint8 T×H×W array-like whose frame ``fail_at`` raises while ``failing``."""

    def __init__(self, data: np.ndarray, fail_at: int) -> None:
        self.data, self.fail_at, self.failing = data, fail_at, False
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        if self.failing and key[0] == self.fail_at:
            raise OSError("disk unplugged")
        return self.data[key]


def click(predictor, state, frame_idx):
    return predictor.add_new_points_or_box(state, frame_idx, 1, points=[[20, 20]], labels=[1])


# ---------------------------------------------------------------------- planning
def test_neighbour_order_nearest_first_within_the_stack():
    assert neighbour_order(3, 2, 7) == [3, 4, 2, 5, 1]
    assert neighbour_order(0, 2, 7) == [0, 1, 2]
    assert neighbour_order(6, 3, 7) == [6, 5, 4, 3]
    assert neighbour_order(-1, 2, 7) == [0, 1]
    assert neighbour_order(9, 2, 7) == []
    assert neighbour_order(2, 0, 7) == [2]


def test_focus_plans_skips_cached_and_replans(predictor, calls):
    state = predictor.init_state(frames())
    predictor.encode_frame(state, 4)
    with PreEncoder(predictor, state, radius=2) as pre:
        pre.pause()
        pre.focus(3)
        assert pre.pending == [3, 2, 5, 1] and pre.focus_frame == 3  # 4 is cached
        pre.focus(np.int64(0))  # moving on replaces the plan
        assert pre.pending == [0, 1, 2]
        pre.focus(-1)  # out of range: only the frames within reach
        assert pre.pending == [0, 1]
        pre.focus(50)
        assert pre.pending == []
        for bad in (1.5, True, None):
            with pytest.raises(TypeError):
                pre.focus(bad)  # type: ignore[arg-type]
        assert len(calls) == 1  # nothing ran while paused
    with pytest.raises(ValueError, match="radius"):
        PreEncoder(predictor, state, radius=-1)
    state.close()


def test_out_of_range_focus_starts_no_thread(predictor):
    state = predictor.init_state(frames(3))
    pre = PreEncoder(predictor, state, radius=1)
    pre.focus(10)
    assert not pre.alive and pre.wait_idle(WAIT) and pre.encoded == 0
    pre.close()
    state.close()


def test_cache_is_raised_for_the_neighbourhood_never_lowered(predictor):
    state = predictor.init_state(frames())
    assert state.feature_cache.max_items == 4
    PreEncoder(predictor, state, radius=3).close()
    assert state.feature_cache.max_items == 8
    PreEncoder(predictor, state, radius=1).close()
    assert state.feature_cache.max_items == 8
    state.close()


# ---------------------------------------------------------------------- encoding
def test_neighbours_encoded_in_order_then_clicks_reuse_them_with_same_results(predictor, calls):
    data = frames()
    state = predictor.init_state(data)
    recorder = _Recorder(predictor)
    pre = PreEncoder(recorder, state, radius=2)  # type: ignore[arg-type]
    pre.focus(3)
    assert pre.wait_idle(WAIT)
    assert recorder.order == [3, 4, 2, 5, 1]
    assert pre.encoded == 5 and pre.failed == 0
    assert sorted(state.feature_cache.keys()) == [1, 2, 3, 4, 5]
    assert len(calls) == 5 and all(name == "napari-sam2-pre-encoder" for name in calls)
    pre.focus(3)  # all cached: nothing more
    assert pre.wait_idle(WAIT) and pre.encoded == 5

    outputs = [click(predictor, state, t) for t in (4, 1)]
    assert len(calls) == 5  # the clicks encoded nothing
    plain = predictor.init_state(data)  # the same clicks without pre-encoding
    expected = [click(predictor, plain, t) for t in (4, 1)]
    assert len(calls) == 7
    for (f_a, ids_a, m_a), (f_b, ids_b, m_b) in zip(outputs, expected):
        assert (f_a, ids_a) == (f_b, ids_b)
        assert (m_a > 0).any() and torch.equal(m_a, m_b)
    pre.close()
    state.close()
    plain.close()


def test_click_on_a_frame_being_pre_encoded_waits_for_it(predictor, calls):
    state = predictor.init_state(frames())
    recorder = _Recorder(predictor, hold=True)
    pre = PreEncoder(recorder, state, radius=0)  # type: ignore[arg-type]
    pre.focus(2)
    assert recorder.entered.wait(WAIT)
    # let the thread start encoding, and hold it inside the encoder
    started, go_on = threading.Event(), threading.Event()
    inner = predictor.model.forward_image

    def slow_forward(x):
        if threading.current_thread().name == "napari-sam2-pre-encoder":
            started.set()
            assert go_on.wait(WAIT)
        return inner(x)

    predictor.model.forward_image = slow_forward
    try:
        recorder.release.set()
        assert started.wait(WAIT) and state.feature_cache.computing(2)
        results: list = []
        fg = threading.Thread(target=lambda: results.append(click(predictor, state, 2)))
        fg.start()
        go_on.set()
        fg.join(WAIT)
        assert not fg.is_alive() and len(results) == 1
    finally:
        predictor.model.forward_image = inner  # back to the fixture's counting wrapper
    assert pre.wait_idle(WAIT)
    assert len(calls) == 1 and pre.encoded == 1  # one encoding, shared by the click
    pre.close()
    state.close()


def test_pause_lets_the_current_frame_finish_and_starts_no_other(predictor, calls):
    state = predictor.init_state(frames())
    recorder = _Recorder(predictor, hold=True)
    pre = PreEncoder(recorder, state, radius=2)  # type: ignore[arg-type]
    pre.focus(3)
    assert recorder.entered.wait(WAIT)  # frame 3 started
    pre.pause()
    recorder.release.set()
    assert pre.wait_idle(WAIT)  # frame 3 done, nothing else started
    assert recorder.order == [3] and pre.pending == [4, 2, 5, 1] and len(calls) == 1
    with pre.paused():  # nests: still paused afterwards
        pass
    assert pre.is_paused and pre.wait_idle(WAIT) and len(calls) == 1
    pre.resume()
    assert pre.wait_idle(WAIT) and pre.pending == [] and len(calls) == 5
    pre.close()
    state.close()


def test_close_joins_the_thread_and_gc_stops_it(predictor):
    state = predictor.init_state(frames())
    pre = PreEncoder(predictor, state, radius=1)
    pre.focus(1)
    assert pre.alive
    pre.close()
    assert not pre.alive and pre.closed
    pre.close()  # idempotent
    pre.focus(2)  # ignored once closed
    assert pre.pending == [] and not pre.alive

    other = PreEncoder(predictor, state, radius=1)
    other.focus(4)
    thread = other._worker.thread
    del other
    gc.collect()
    thread.join(WAIT)
    assert not thread.is_alive()
    state.close()


def test_a_read_error_stays_in_the_background(predictor, calls, caplog):
    stack = _FlakyStack(frames(), fail_at=4)
    state = predictor.init_state(stack)
    stack.failing = True
    pre = PreEncoder(predictor, state, radius=1)
    with caplog.at_level("WARNING", logger="napari_sam2.core.video.pre_encoder"):
        pre.focus(3)
        assert pre.wait_idle(WAIT)
    assert pre.failed == 1 and isinstance(pre.last_error, FrameReadError)
    assert pre.encoded == 2 and sorted(state.feature_cache.keys()) == [2, 3]
    assert "frame 4" in caplog.text
    click(predictor, state, 3)  # the foreground works on the encoded frames
    with pytest.raises(FrameReadError):  # and meets the error itself where it is real
        click(predictor, state, 4)
    stack.failing = False
    _, _, masks = click(predictor, state, 4)  # and encodes the frame normally once readable
    assert (masks > 0).any() and len(calls) == 3
    pre.close()
    state.close()


def test_closed_state_is_skipped(predictor, calls):
    state = predictor.init_state(frames())
    pre = PreEncoder(predictor, state, radius=1)
    pre.pause()
    pre.focus(2)
    state.close()
    pre.resume()
    assert pre.wait_idle(WAIT) and pre.encoded == 0 and pre.failed == 0 and not calls
    pre.close()


# ---------------------------------------------------------------------- single flight
def test_single_flight_two_threads_compute_once():
    cache = FeatureCache(4)
    computing, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def compute():
        runs.append(1)
        computing.set()
        assert release.wait(WAIT)
        return object()

    got: list = []
    first = threading.Thread(target=lambda: got.append(cache.get_or_compute("k", compute)))
    first.start()
    assert computing.wait(WAIT) and cache.computing("k")
    second = threading.Thread(target=lambda: got.append(cache.get_or_compute("k", compute)))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # it waits for the first thread's result
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert len(runs) == 1 and len(got) == 2 and got[0] is got[1] is cache.get("k")
    assert not cache.computing("k") and cache.misses == 1
    assert cache.get_or_compute("k", compute) is got[0] and len(runs) == 1


def test_single_flight_failure_and_clear_make_waiters_compute():
    cache = FeatureCache(4)
    computing, release = threading.Event(), threading.Event()

    def failing():
        computing.set()
        assert release.wait(WAIT)
        raise OSError("boom")

    errors: list = []

    def first_caller():
        try:
            cache.get_or_compute("k", failing)
        except OSError as err:
            errors.append(err)

    t = threading.Thread(target=first_caller)
    t.start()
    assert computing.wait(WAIT)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(cache.get_or_compute("k", lambda: 7)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # waiting for the first computation
    release.set()
    t.join(WAIT)
    waiter.join(WAIT)
    # the error stayed with its thread; the waiter computed the value itself
    assert len(errors) == 1 and got == [7] and cache.get("k") == 7

    # clear() while computing: the old result is not stored, waiters compute afresh
    computing.clear()
    release.clear()

    def old():
        computing.set()
        assert release.wait(WAIT)
        return "old"

    got.clear()
    t = threading.Thread(target=lambda: got.append(cache.get_or_compute("j", old)))
    t.start()
    assert computing.wait(WAIT)
    cache.clear()
    assert not cache.computing("j")
    release.set()
    t.join(WAIT)
    assert got == ["old"] and "j" not in cache
    assert cache.get_or_compute("j", lambda: "new") == "new" and cache.get("j") == "new"
    off = FeatureCache(0)
    assert off.get_or_compute("x", lambda: 3) == 3 and len(off) == 0
