"""SAM2VideoPredictor: parity with the reference ``sam2==1.1.0`` video predictor, bounded RAM,
lazy encoding, direction/range, bad input, failures and cancellation.

Both predictors run the same random weights (the reference's, through our checkpoint loader)
on the same frames (the reference's frame loader is replaced by a lazy one that feeds each
uint8 frame, as a lossless PNG, through the reference's own per-frame loader, so the
reference resizes as it does for a JPEG folder; see also test_frame_resize.py). Hole filling
is off on both (the reference needs a CUDA extension for it) and tested separately. Run with
``-s`` to see the measured differences.
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from napari_sam2.core.stacks.model_input import IMAGENET_MEAN, IMAGENET_STD
from napari_sam2.core.stacks.source import FrameReadError
from napari_sam2.core.video.predictor import SAM2VideoPredictor, UnknownObjectError
from napari_sam2.models.checkpoints import load_model
from napari_sam2.models.postprocessing import fill_holes_in_mask_scores

from ...conftest import reference_config_name

svp = pytest.importorskip("sam2.sam2_video_predictor")
build_sam = pytest.importorskip("sam2.build_sam")
misc = pytest.importorskip("sam2.utils.misc")

TOL = 1e-3  # logits; masks may differ only where |logit| < TOL
# Shift of the object-score logit (as in tests/models/test_sam2_model.py) so that objects are
# present on some frames and absent on others with these random weights.
OBJ_SCORE_SHIFT = {"sam2.1_hiera_t": -0.15, "sam2_hiera_t": 0.1}
MAX_DIFFS: dict[str, float] = {}
_PAIRS: dict = {}


# ---------------------------------------------------------------------- helpers
def make_frames(n: int, h: int = 256, w: int = 256, period: int | None = None) -> np.ndarray:
    """``n×h×w×3`` uint8 frames: two moving discs and a square on a noisy background; with a
    ``period`` the frames repeat (so that a memoised encoder runs once per distinct frame)."""
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((n, h, w, 3), np.uint8)
    r = 0.1 * min(h, w)
    for t in range(n):
        s = t if period is None else t % period  # frame t only depends on s
        img = np.random.default_rng(s).integers(0, 40, (h, w, 3), dtype=np.uint8)
        for (fx, fy), color in zip(disc_centers(s), [(220, 60, 60), (60, 200, 90)]):
            img[(xx - fx * w) ** 2 + (yy - fy * h) ** 2 < r * r] = color
        img[int(0.7 * h) : int(0.9 * h), int(0.1 * w) : int(0.3 * w)] = (70, 90, 230)
        frames[t] = img
    return frames


def disc_centers(t: int) -> list[tuple[float, float]]:
    return [(0.2 + 0.02 * t, 0.35), (0.7 - 0.015 * t, 0.6)]


def click(t: int, obj: int, h: int, w: int) -> list[list[float]]:
    fx, fy = disc_centers(t)[obj]
    return [[fx * w, fy * h]]


class _RefFrames:
    """Lazy stand-in for the reference's frame tensor: the reference's own loading (PIL
    bicubic resize of the 8-bit frame, ImageNet mean/std) of each frame, on demand."""

    def __init__(self, frames: np.ndarray, image_size: int) -> None:
        self.frames, self.image_size = frames, image_size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> torch.Tensor:
        buffer = io.BytesIO()
        Image.fromarray(self.frames[i]).save(buffer, format="PNG")
        buffer.seek(0)
        img, _, _ = misc._load_img_as_tensor(buffer, self.image_size)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (img.float() - mean) / std


def ref_init_state(ref, frames: np.ndarray):
    loader = lambda **kw: (_RefFrames(frames, ref.image_size), *frames.shape[1:3])  # noqa: E731
    with mock.patch.object(svp, "load_video_frames", loader):
        return ref.init_state("unused")


def memoize_encoder(model) -> None:
    """Encode each distinct image once (test speed only: the encoder is deterministic). Calls
    still go through ``model.forward_image``, so they can be counted."""
    cache: dict[str, dict] = {}
    original = model.forward_image

    def forward_image(x):
        key = hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()
        if key not in cache:
            cache[key] = original(x)
        return cache[key]

    model.forward_image = forward_image


def compare(name: str, ref_out, our_out, non_overlap: bool = False) -> float:
    """Same frame and ids, same masks (except where |logit| < TOL), logits within TOL.

    With ``non_overlap`` masks, pixels where the two best objects tie (within TOL) may go to
    either object: they are checked to be ties and left out.
    """
    (f_r, ids_r, m_r), (f_o, ids_o, m_o) = ref_out, our_out
    assert f_r == f_o and list(ids_r) == list(ids_o), (name, f_r, f_o, ids_r, ids_o)
    assert m_r.shape == m_o.shape and m_o.dtype == torch.float32, (name, m_r.shape, m_o.shape)
    if non_overlap:
        best_r, win_r = m_r.max(0)
        best_o, win_o = m_o.max(0)
        swapped = win_r != win_o
        assert ((best_r - best_o).abs()[swapped] < TOL).all(), f"{name}: winners differ"
        m_r, m_o = m_r[:, ~swapped], m_o[:, ~swapped]
    flipped = ((m_r > 0) != (m_o > 0)) & (torch.maximum(m_r.abs(), m_o.abs()) >= TOL)
    assert not flipped.any(), f"{name}: {int(flipped.sum())} mask pixels differ"
    diff = (m_r - m_o).abs().max().item()
    assert diff <= TOL, f"{name} frame {f_o}: max logit diff {diff:.3g}"
    MAX_DIFFS[name] = max(MAX_DIFFS.get(name, 0.0), diff)
    return diff


def compare_runs(name: str, ref_iter, our_iter, non_overlap: bool = False) -> None:
    ref_list, our_list = list(ref_iter), list(our_iter)
    assert [f for f, *_ in ref_list] == [f for f, *_ in our_list], name
    for a, b in zip(ref_list, our_list):
        compare(name, a, b, non_overlap)


@pytest.fixture(scope="module")
def video_pair(official_checkpoint):
    """``video_pair(config, image_size)`` -> (reference video predictor, our predictor)."""

    def make(config: str, image_size: int = 256):
        key = (config, image_size)
        if key not in _PAIRS:
            path = official_checkpoint(config, image_size)
            ref = build_sam.build_sam2_video_predictor(
                reference_config_name(config), ckpt_path=str(path), device="cpu",
                hydra_overrides_extra=[f"++model.image_size={image_size}"],
            )
            ref.fill_hole_area = 0  # its CUDA-only hole filling is skipped on CPU anyway
            model = load_model(
                path, config=config, device="cpu", image_size=image_size, video=True,
                precision="fast",
            )
            with torch.no_grad():
                for m in (ref, model):
                    head = m.sam_mask_decoder.pred_obj_score_head
                    head.layers[-1].bias += OBJ_SCORE_SHIFT[config]
            if image_size == 256:  # frames recur across tests: encode each one once
                memoize_encoder(ref)
                memoize_encoder(model)
            _PAIRS[key] = (
                ref.eval(),
                SAM2VideoPredictor(model, fill_hole_area=0, feature_cache_size=32),
            )
        return _PAIRS[key]

    return make


@pytest.fixture(scope="module")
def ours(video_pair):
    return video_pair("sam2.1_hiera_t")[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_report():
    """One thread (much faster than two on a small, shared CPU); no reference progress bars."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with mock.patch.object(svp, "tqdm", lambda iterable, **kwargs: iterable):
        yield
    torch.set_num_threads(threads)
    if MAX_DIFFS:
        print("\nmax |logit| differences ours vs reference:")
        for name, diff in sorted(MAX_DIFFS.items()):
            print(f"  {name}: {diff:.3g}")


# ---------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "config, hw", [("sam2.1_hiera_t", (192, 320)), ("sam2_hiera_t", (256, 256))]
)
def test_parity_story(video_pair, config, hw):
    """Clicks and a box on frame 0, propagation, a correction and re-propagation, a mask for an
    object added after tracking, reverse propagation, clearing prompts and removing an object."""
    ref, ours = video_pair(config)
    h, w = hw
    frames = make_frames(10, h, w)
    rs, st = ref_init_state(ref, frames), ours.init_state(frames)
    name = f"{config} {h}x{w}"

    def both(method, *args, **kwargs):
        return getattr(ref, method)(rs, *args, **kwargs), getattr(ours, method)(st, *args, **kwargs)

    compare(name, *both("add_new_points_or_box", 0, 1, points=click(0, 0, h, w), labels=[1]))
    fx, fy = disc_centers(0)[1]
    box = [(fx - 0.12) * w, (fy - 0.12) * h, (fx + 0.12) * w, (fy + 0.12) * h]
    compare(name, *both("add_new_points_or_box", 0, 2, box=box))
    compare_runs(name, *both("propagate_in_video"))
    # correction on a tracked frame: a positive and a negative click
    pts = click(6, 0, h, w) + [[0.5 * w, 0.1 * h]]
    compare(name, *both("add_new_points_or_box", 6, 1, points=pts, labels=[1, 0]))
    compare_runs(name, *both("propagate_in_video", start_frame_idx=6, max_frame_num_to_track=3))
    # a new object after tracking, from a mask, followed in reverse then forward
    mask = np.zeros((h, w), bool)
    mask[int(0.7 * h) : int(0.9 * h), int(0.1 * w) : int(0.3 * w)] = True
    compare(name, *both("add_new_mask", 4, 3, mask))
    compare_runs(name, *both("propagate_in_video", start_frame_idx=4, reverse=True))
    compare_runs(name, *both("propagate_in_video", start_frame_idx=4, max_frame_num_to_track=2))
    compare(name, *both("clear_all_prompts_in_frame", 6, 1))
    (ids_r, upd_r), (ids_o, upd_o) = both("remove_object", 2)
    assert ids_r == ids_o == [1, 3] and [f for f, _ in upd_r] == [f for f, _ in upd_o] == [0]
    compare(name, (0, ids_r, upd_r[0][1]), (0, ids_o, upd_o[0][1]))
    compare_runs(name, *both("propagate_in_video", start_frame_idx=4, max_frame_num_to_track=2))
    assert st.results.directory is None  # short stacks never touch the disk
    st.close()


def test_parity_options_non_overlap_and_corrections_as_cond(video_pair):
    """``non_overlap_masks`` and ``add_all_frames_to_correct_as_cond`` set on both predictors."""
    ref, ours = video_pair("sam2.1_hiera_t")
    frames = make_frames(6)
    predictor = SAM2VideoPredictor(ours.model, fill_hole_area=0, non_overlap_masks=True,
                                   add_all_frames_to_correct_as_cond=True)
    rs, st = ref_init_state(ref, frames), predictor.init_state(frames)
    try:
        ref.non_overlap_masks = ref.add_all_frames_to_correct_as_cond = True
        for p, s in ((ref, rs), (predictor, st)):
            p.add_new_points_or_box(s, 0, 1, points=click(0, 0, 256, 256), labels=[1])
            p.add_new_points_or_box(s, 0, 2, points=click(0, 1, 256, 256), labels=[1])
        compare_runs("options", ref.propagate_in_video(rs), predictor.propagate_in_video(st), True)
        args = (3, 2)
        kwargs = dict(points=click(3, 1, 256, 256) + [[10.0, 10.0]], labels=[1, 0])
        compare("options", ref.add_new_points_or_box(rs, *args, **kwargs),
                predictor.add_new_points_or_box(st, *args, **kwargs), True)
        compare_runs("options", ref.propagate_in_video(rs), predictor.propagate_in_video(st), True)
        assert st.results.is_cond(st.objects[2].key, 3)
    finally:
        ref.non_overlap_masks = ref.add_all_frames_to_correct_as_cond = False
        st.close()


def test_parity_image_size_1024(video_pair):
    ref, ours = video_pair("sam2.1_hiera_t", 1024)
    frames = make_frames(3, 1024, 1024)
    rs, st = ref_init_state(ref, frames), ours.init_state(frames)
    pts = click(0, 0, 1024, 1024)
    compare("sam2.1_hiera_t 1024", ref.add_new_points_or_box(rs, 0, 1, points=pts, labels=[1]),
            ours.add_new_points_or_box(st, 0, 1, points=pts, labels=[1]))
    compare_runs("sam2.1_hiera_t 1024", ref.propagate_in_video(rs), ours.propagate_in_video(st))
    st.close()


def test_reverse_past_prompts_reference_crashes_ours_runs(video_pair):
    """Tracking towards an object's prompt with only its (bfloat16) memory to read: the
    reference fails on a dtype clash, ours casts memories to the compute dtype."""
    ref, ours = video_pair("sam2.1_hiera_t")
    frames = make_frames(10)
    rs, st = ref_init_state(ref, frames), ours.init_state(frames)
    for p, s in ((ref, rs), (ours, st)):
        p.add_new_points_or_box(s, 5, 1, points=click(5, 0, 256, 256), labels=[1])
    with pytest.raises(RuntimeError, match="same dtype"):
        list(ref.propagate_in_video(rs, start_frame_idx=9, reverse=True))
    out = list(ours.propagate_in_video(st, start_frame_idx=9, reverse=True))
    assert [f for f, *_ in out] == list(range(9, -1, -1))
    for _, ids, masks in out:
        assert ids == [1] and masks.shape == (1, 1, 256, 256) and torch.isfinite(masks).all()
    st.close()


# ---------------------------------------------------------------------- bounded RAM
def test_ram_bounded_spill_exact_and_cleanup(video_pair):
    ref, ours = video_pair("sam2.1_hiera_t")
    n = 300
    frames = make_frames(n, period=10)
    st = ours.init_state(frames)
    store = st.results
    first = ours.add_new_points_or_box(st, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    counts, ours_first_pass = {}, []
    for frame_idx, ids, masks in ours.propagate_in_video(st):
        if frame_idx <= 10:
            ours_first_pass.append((frame_idx, ids, masks))
        if frame_idx in (100, n - 1):
            counts[frame_idx] = store.in_memory_count()
    bound = ours.ram_window + 1  # the window plus the conditioning frame
    print(f"\nin-RAM results after 100 / {n} frames: {counts[100]} / {counts[n - 1]} "
          f"(bound {bound}); spilled {store.spilled_count()}, {store.disk_bytes() / 2**20:.1f} MiB")
    assert counts[100] == counts[n - 1] <= bound
    assert store.spilled_count() == n - bound
    directory = store.directory
    assert directory is not None and os.path.isdir(directory)

    # the reference (everything in RAM) on the same 300 frames: results of frames 0..10 only
    # depend on frames 0..10, so it tracks those; then a correction on frame 5 (which reads the
    # spilled results of frames 0..4) and re-propagation over a few frames
    rs = ref_init_state(ref, frames)
    compare("ram 300 frames", ref.add_new_points_or_box(rs, 0, 1, points=click(0, 0, 256, 256),
                                                        labels=[1]), first)
    compare_runs("ram 300 frames", ref.propagate_in_video(rs, max_frame_num_to_track=10),
                 ours_first_pass)
    reads = store.spill_reads
    pts, labels = click(5, 0, 256, 256) + [[200.0, 30.0]], [1, 0]
    compare("ram 300 frames", ref.add_new_points_or_box(rs, 5, 1, points=pts, labels=labels),
            ours.add_new_points_or_box(st, 5, 1, points=pts, labels=labels))
    assert store.spill_reads > reads  # the correction did read spilled results
    compare_runs("ram 300 frames",
                 ref.propagate_in_video(rs, start_frame_idx=5, max_frame_num_to_track=5),
                 ours.propagate_in_video(st, start_frame_idx=5, max_frame_num_to_track=5))
    ours.reset_state(st)
    assert not os.path.exists(directory) and store.in_memory_count() == 0
    # close() removes a new spill directory too
    ours.add_new_points_or_box(st, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    list(ours.propagate_in_video(st, max_frame_num_to_track=ours.ram_window + 5))
    directory = store.directory
    assert directory is not None and os.path.isdir(directory)
    with st:
        pass
    assert not os.path.exists(directory)


# ---------------------------------------------------------------------- lazy encoding
def test_frames_encoded_once_and_reused(ours, monkeypatch):
    calls = []
    original = ours.model.forward_image
    monkeypatch.setattr(
        ours.model, "forward_image", lambda x: calls.append(1) or original(x)
    )
    st = ours.init_state(make_frames(6), store=False)
    assert not calls  # nothing is encoded up front
    ours.add_new_points_or_box(st, 2, 1, points=click(2, 0, 256, 256), labels=[1])
    assert len(calls) == 1
    list(ours.propagate(st, direction="both"))
    assert len(calls) == 6  # each frame once; the prompted frame was cached
    list(ours.propagate(st, direction="both"))
    ours.add_new_points_or_box(st, 4, 1, points=click(4, 0, 256, 256), labels=[1])
    list(ours.propagate_in_video(st, start_frame_idx=3))
    assert len(calls) == 6  # re-propagation over cached frames encodes nothing
    st.feature_cache.max_items = 1
    list(ours.propagate_in_video(st))
    assert len(calls) > 6  # evicted features are recomputed
    st.close()

    calls.clear()  # with an embedding store behind the cache, evicted features are read back
    results, encoded = {}, {}
    for store in (False, None):
        calls.clear()
        st = ours.init_state(make_frames(6), store=store)
        st.feature_cache.max_items = 1
        ours.add_new_points_or_box(st, 2, 1, points=click(2, 0, 256, 256), labels=[1])
        list(ours.propagate(st, direction="both"))
        results[store] = [m.clone() for _, _, m in ours.propagate(st, direction="both")]
        encoded[store] = len(calls)
        st.close()
    assert encoded[None] == 6 < encoded[False]  # RAM only: re-encoded; the store: read back
    assert all(torch.equal(a, b) for a, b in zip(results[False], results[None]))


# ---------------------------------------------------------------------- direction and range
def test_propagate_directions_and_ranges(ours):
    frames = make_frames(8)
    st = ours.init_state(frames)
    ours.add_new_points_or_box(st, 3, 1, points=click(3, 0, 256, 256), labels=[1])
    both = list(ours.propagate(st, direction="both"))
    assert [f for f, *_ in both] == [3, 4, 5, 6, 7, 3, 2, 1, 0]
    # identical to SAM 2's usual pair of calls
    st2 = ours.init_state(frames)
    ours.add_new_points_or_box(st2, 3, 1, points=click(3, 0, 256, 256), labels=[1])
    pair = [*ours.propagate_in_video(st2), *ours.propagate_in_video(st2, reverse=True)]
    for a, b in zip(both, pair):
        assert a[0] == b[0] and torch.equal(a[2], b[2])
    got = [f for f, *_ in ours.propagate(st, direction="both", frame_range=(1, 5))]
    assert got == [3, 4, 5, 3, 2, 1]
    assert [f for f, *_ in ours.propagate(st, "backward", (0, 6))] == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="No prompted frame in frame_range"):
        ours.propagate(st, "forward", (5, 7))
    got = [f for f, *_ in ours.propagate(st, "forward", (5, 7), start_frame_idx=5)]
    assert got == [5, 6, 7]
    assert [f for f, *_ in ours.propagate(st, "backward", start_frame_idx=0)] == [0]
    assert list(ours.propagate_in_video(st, start_frame_idx=0, reverse=True)) == []  # as SAM 2
    assert [f for f, *_ in ours.propagate_in_video(st, max_frame_num_to_track=2)] == [3, 4, 5]
    with pytest.raises(ValueError, match="direction"):
        ours.propagate(st, direction="sideways")
    with pytest.raises(ValueError, match="first <= last"):
        ours.propagate(st, frame_range=(5, 2))
    with pytest.raises(IndexError, match=r"frame_range\[1\]"):
        ours.propagate(st, frame_range=(0, 8))
    with pytest.raises(IndexError, match="start_frame_idx"):
        ours.propagate(st, frame_range=(0, 4), start_frame_idx=6)
    with pytest.raises(ValueError, match="max_frame_num_to_track"):
        ours.propagate_in_video(st, max_frame_num_to_track=-1)
    st.close()
    st2.close()


# ---------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(ours):
    frames = make_frames(4)
    with pytest.raises(ValueError, match="single image"):
        ours.init_state(frames[0, :, :, 0])
    with pytest.raises(ValueError, match="frame_axis"):
        ours.init_state(np.zeros((2, 3, 4, 32, 32), np.uint8))
    st = ours.init_state(frames)
    with pytest.raises(RuntimeError, match="No prompts"):
        ours.propagate_in_video(st)
    with pytest.raises(RuntimeError, match="No prompts"):
        ours.propagate(st)
    pts = click(0, 0, 256, 256)
    with pytest.raises(IndexError, match="frame_idx=4"):
        ours.add_new_points_or_box(st, 4, 1, points=pts, labels=[1])
    with pytest.raises(IndexError, match="frame_idx=-1"):
        ours.add_new_mask(st, -1, 1, np.ones((256, 256), bool))
    with pytest.raises(ValueError, match="together"):
        ours.add_new_points_or_box(st, 0, 1, points=pts)
    with pytest.raises(ValueError, match="point_coords outside"):
        ours.add_new_points_or_box(st, 0, 1, points=[[300, 10]], labels=[1])
    with pytest.raises(ValueError, match="one object per call"):
        ours.add_new_points_or_box(st, 0, 1, points=[pts, pts], labels=[[1], [1]])
    with pytest.raises(ValueError, match="clear_old_points"):
        ours.add_new_points_or_box(st, 0, 1, box=[0, 0, 9, 9], clear_old_points=False)
    with pytest.raises(ValueError, match="empty"):
        ours.add_new_mask(st, 0, 1, np.zeros((256, 256), bool))
    with pytest.raises(ValueError, match="remove_object"):
        ours.add_new_mask(st, 0, 1, np.zeros((256, 256), np.uint8))
    with pytest.raises(ValueError, match=r"mask must be a 2D H×W array .* 256×256"):
        ours.add_new_mask(st, 0, 1, np.ones((128, 128), bool))
    assert st.obj_ids == []  # failed calls add no object
    ours.add_new_points_or_box(st, 0, 1, points=pts, labels=[1])
    with pytest.raises(KeyError, match="unknown obj_id 7"):
        ours.clear_all_prompts_in_frame(st, 0, 7)
    assert ours.remove_object(st, 7) == ([1], [])  # ignored, as SAM 2
    with pytest.raises(KeyError, match="unknown obj_id 7") as err:
        ours.remove_object(st, 7, strict=True)
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, UnknownObjectError)
    with pytest.raises(TypeError, match="inference_state"):
        ours.propagate_in_video({"num_frames": 4})
    # an object whose only prompt was cleared cannot be propagated
    ours.clear_all_prompts_in_frame(st, 0, 1)
    with pytest.raises(RuntimeError, match="Object id 1 has no prompted frame"):
        ours.propagate_in_video(st)
    st.close()
    with pytest.raises(RuntimeError, match="closed"):
        ours.add_new_points_or_box(st, 0, 1, points=pts, labels=[1])


class _FlakyStack:
    """A uint8 T×H×W×3 array-like whose frame ``fail_at`` raises while ``failing``."""

    def __init__(self, frames: np.ndarray, fail_at: int) -> None:
        self.frames, self.fail_at, self.failing = frames, fail_at, False
        self.shape, self.dtype = frames.shape, frames.dtype

    def __getitem__(self, key):
        if self.failing and key[0] == self.fail_at:
            raise OSError("disk unplugged")
        return self.frames[key]


def test_frame_read_error_mid_propagation_keeps_state(ours):
    frames = make_frames(7)
    stack = _FlakyStack(frames, fail_at=4)
    st = ours.init_state(stack)
    st.feature_cache.max_items = 0  # read every frame from the source
    ours.add_new_points_or_box(st, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    stack.failing = True
    seen = []
    with pytest.raises(FrameReadError, match="frame 4"):
        for frame_idx, _, masks in ours.propagate_in_video(st):
            seen.append((frame_idx, masks))
    assert [f for f, _ in seen] == [0, 1, 2, 3]
    obj = st.objects[1]
    assert (obj.tracked[:4] == 0).all() and (obj.tracked[4:] == -1).all()
    assert st.results.get(obj.key, 3) is not None and st.results.get(obj.key, 4) is None
    stack.failing = False  # resume where it stopped: same results as an uninterrupted run
    resumed = seen + [(f, m) for f, _, m in ours.propagate_in_video(st, start_frame_idx=4)]
    reference = ours.init_state(frames)
    ours.add_new_points_or_box(reference, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    full = [(f, m) for f, _, m in ours.propagate_in_video(reference)]
    assert [f for f, _ in resumed] == [f for f, _ in full]
    for (_, a), (_, b) in zip(resumed, full):
        assert torch.equal(a, b)
    st.close()
    reference.close()


def test_closing_the_generator_midway_keeps_yielded_frames(ours):
    """Also with a RAM window of 1, where tracking reads every earlier result from disk."""
    frames = make_frames(7)
    spilling = SAM2VideoPredictor(ours.model, fill_hole_area=0, ram_window=1)
    st = spilling.init_state(frames)
    spilling.add_new_points_or_box(st, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    gen = spilling.propagate_in_video(st)
    first = [next(gen) for _ in range(3)]
    gen.close()
    obj = st.objects[1]
    assert (obj.tracked[:3] == 0).all() and (obj.tracked[3:] == -1).all()
    assert [st.results.get(obj.key, t) is not None for t in range(7)] == [True] * 3 + [False] * 4
    rest = list(spilling.propagate_in_video(st, start_frame_idx=3))
    assert st.results.spill_reads > 0 and st.results.in_memory_count() <= 2
    in_ram = ours.init_state(frames)  # uninterrupted, everything in RAM: same numbers
    ours.add_new_points_or_box(in_ram, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    full = list(ours.propagate_in_video(in_ram))
    assert in_ram.results.spill_reads == 0
    for a, b in zip(first + rest, full, strict=True):
        assert a[0] == b[0] and torch.equal(a[2], b[2])
    st.close()
    in_ram.close()


# ---------------------------------------------------------------------- our own behaviour
def test_new_clicks_on_a_prompted_frame_are_kept_after_propagation(ours):
    """SAM 2 drops such a correction at the next propagation; ours keeps it."""
    st = ours.init_state(make_frames(4))
    ours.add_new_points_or_box(st, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    list(ours.propagate_in_video(st))
    _, _, corrected = ours.add_new_points_or_box(
        st, 0, 1, points=[[80.0, 90.0]], labels=[0], clear_old_points=False
    )
    first = next(iter(ours.propagate_in_video(st)))
    assert torch.equal(first[2], corrected)
    assert st.obj_ids == [1] and st["num_frames"] == 4 and st["video_height"] == 256
    st.close()


def test_fill_hole_area_fills_small_holes(ours):
    frames = make_frames(2)
    filled = SAM2VideoPredictor(ours.model, fill_hole_area=8)
    results = []
    for predictor in (ours, filled):
        st = predictor.init_state(frames)
        predictor.add_new_points_or_box(st, 0, 1, points=click(0, 0, 256, 256), labels=[1])
        results.append(st.objects[1].temp_outputs[0].output.pred_masks)
        st.close()
    raw, out = results
    assert torch.equal(out, fill_holes_in_mask_scores(raw, 8))


def test_state_is_collected_with_its_spill_directory(ours):
    predictor = SAM2VideoPredictor(ours.model, ram_window=1)
    st = predictor.init_state(make_frames(4))
    predictor.add_new_points_or_box(st, 0, 1, points=click(0, 0, 256, 256), labels=[1])
    list(predictor.propagate_in_video(st))
    directory = st.results.directory
    assert directory is not None and os.path.isdir(directory)
    del st
    gc.collect()
    assert not os.path.exists(directory)


def test_init_state_sources_and_from_pretrained(official_checkpoint, tmp_path):
    import tifffile

    from napari_sam2.core.stacks.source import open_frames

    predictor = SAM2VideoPredictor.from_pretrained(
        official_checkpoint("sam2.1_hiera_t", 256), config="sam2.1_hiera_t", device="cpu",
        image_size=256, fill_hole_area=0,
    )
    assert predictor.image_size == 256 and predictor.fill_hole_area == 0
    grey = make_frames(3, 64, 96)[..., 0]
    tifffile.imwrite(tmp_path / "stack.tif", grey, photometric="minisblack")
    with predictor.init_state(video_path=str(tmp_path / "stack.tif")) as st:  # SAM 2's keyword
        assert (st.num_frames, st.video_height, st.video_width) == (3, 64, 96)
        _, ids, masks = predictor.add_new_points_or_box(
            st, 1, "cell", points=[[20, 20]], labels=[1]
        )
        assert ids == ["cell"] and masks.shape == (1, 1, 64, 96)
        frames = st.frames
    assert frames.closed  # opened by the state, closed with it
    source = open_frames(grey)
    with predictor.init_state(source) as st:
        assert st.frames is source and not st.owns_frames
    assert not source.closed  # the caller's source stays open
    source.close()
    with pytest.raises(ValueError, match="once"):
        predictor.init_state(grey, video_path="x")


def test_a_network_loaded_for_images_tracks_with_the_video_settings(official_checkpoint):
    """SAM 2's video predictor binarises the masks of prompted frames before encoding their
    memory. Ours applies that itself: a network loaded without ``video=True`` (shared, say,
    with an image predictor) tracks exactly like the reference's video predictor, and is
    left as it was."""
    from tests.conftest import realistic_weights

    path = official_checkpoint("sam2.1_hiera_t", 256)
    ref = build_sam.build_sam2_video_predictor(
        reference_config_name("sam2.1_hiera_t"), ckpt_path=str(path), device="cpu",
        hydra_overrides_extra=["++model.image_size=256"],
    )
    ref.fill_hole_area = 0
    image_model = load_model(path, config="sam2.1_hiera_t", device="cpu", image_size=256,
                             precision="fast")
    for m in (ref, image_model):
        realistic_weights(m)  # present objects, logits of a trained model's size
    assert not image_model.binarize_mask_from_pts_for_mem_enc and image_model.fill_hole_area == 0
    predictor = SAM2VideoPredictor(image_model, fill_hole_area=0, store=False)
    frames = make_frames(4)
    rs, st = ref_init_state(ref.eval(), frames), predictor.init_state(frames)
    args = dict(points=click(0, 0, 256, 256), labels=[1])
    compare("image network", ref.add_new_points_or_box(rs, 0, 1, **args),
            predictor.add_new_points_or_box(st, 0, 1, **args))
    ref_run, our_run = list(ref.propagate_in_video(rs)), list(predictor.propagate_in_video(st))
    for a, b in zip(ref_run, our_run):
        assert (b[2] > 0).any() and (b[2] < 0).any()  # a real mask, not "absent"
        compare("image network", a, b)
    assert not image_model.binarize_mask_from_pts_for_mem_enc  # not changed
    assert SAM2VideoPredictor(image_model).fill_hole_area == 8  # the video default
    st.close()
