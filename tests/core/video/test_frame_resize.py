"""Stack frames are resized as SAM 2's video frame loader resizes them (PIL's bicubic on the
8-bit frame), not as its image predictor does: parity with the reference ``sam2==1.1.0``
video predictor reading the very same JPEG files through its own loader, for frames smaller
and larger than the model input, from a JPEG folder and from a ``uint8`` array.

Weights are random but realistic: the object-presence bias is raised (+10, so objects are
present) and the mask hypernetworks' last layers are scaled (×20, so logits have a trained
model's size, tens rather than ±0.5); a resize that differs by one grey level moves such
logits by far more than the tolerance. Hole filling is off on both sides.
"""

from __future__ import annotations

import io
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from napari_sam2.core.stacks.model_input import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    image_to_tensor,
    video_frame_to_tensor,
)
from napari_sam2.core.video.predictor import SAM2VideoPredictor
from napari_sam2.models.checkpoints import load_model

from ...conftest import realistic_weights, reference_config_name

svp = pytest.importorskip("sam2.sam2_video_predictor")
build_sam = pytest.importorskip("sam2.build_sam")
misc = pytest.importorskip("sam2.utils.misc")

TOL = 1e-3  # logits
CONFIG = "sam2.1_hiera_t"
MAX_DIFFS: dict[str, float] = {}


@pytest.fixture(scope="module")
def pair(official_checkpoint):
    """``pair(image_size)`` -> (reference video predictor, ours) on the same realistic weights."""
    made: dict[int, tuple] = {}

    def make(image_size: int):
        if image_size not in made:
            path = official_checkpoint(CONFIG, image_size)
            ref = build_sam.build_sam2_video_predictor(
                reference_config_name(CONFIG), ckpt_path=str(path), device="cpu",
                hydra_overrides_extra=[f"++model.image_size={image_size}"],
            )
            ref.fill_hole_area = 0
            model = load_model(
                path, config=CONFIG, device="cpu", image_size=image_size, video=True,
                precision="fast",
            )
            realistic_weights(ref)
            realistic_weights(model)
            made[image_size] = (ref.eval(), SAM2VideoPredictor(model, fill_hole_area=0))
        return made[image_size]

    return make


@pytest.fixture(scope="module", autouse=True)
def _quiet_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with mock.patch.object(misc, "tqdm", lambda iterable, **kwargs: iterable), \
            mock.patch.object(svp, "tqdm", lambda iterable, **kwargs: iterable):
        yield
    torch.set_num_threads(threads)
    if MAX_DIFFS:
        print("\nmax |logit| differences ours vs reference (video resize):")
        for name, diff in sorted(MAX_DIFFS.items()):
            print(f"  {name}: {diff:.3g}")


def rgb_frames(n: int, h: int, w: int) -> np.ndarray:
    """``n×h×w×3`` uint8: a bright disc moving on a textured background (sharp edges and fine
    texture, where resize kernels differ most)."""
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        img = np.random.default_rng(t).integers(0, 90, (h, w, 3), dtype=np.uint8)
        cx, cy, r = (0.35 + 0.05 * t) * w, 0.45 * h, 0.2 * min(h, w)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (230, 80, 40)
        img[int(0.7 * h) : int(0.9 * h), int(0.1 * w) : int(0.3 * w)] = (40, 90, 235)
        out[t] = img
    return out


def jpeg_folder(frames: np.ndarray, folder: Path) -> np.ndarray:
    """Write ``00000.jpg, ...`` (the reference's naming) and return the decoded frames."""
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=90)
    return np.stack([np.asarray(Image.open(folder / f"{t:05d}.jpg")) for t in range(len(frames))])


def compare(name: str, ref_out, our_out) -> None:
    (f_r, ids_r, m_r), (f_o, ids_o, m_o) = ref_out, our_out
    assert f_r == f_o and list(ids_r) == list(ids_o), (name, f_r, f_o)
    assert m_r.shape == m_o.shape, (name, m_r.shape, m_o.shape)
    assert m_r.abs().max() > 5, f"{name}: logits too small to prove anything"
    assert (m_r > 0).any() and (m_r <= 0).any(), f"{name}: empty or full mask proves nothing"
    diff = (m_r - m_o).abs().max().item()
    MAX_DIFFS[name] = max(MAX_DIFFS.get(name, 0.0), diff)
    assert diff <= TOL, f"{name} frame {f_o}: max logit diff {diff:.3g}"


@pytest.mark.parametrize(
    "hw, image_size, source",
    [
        ((300, 420), 256, "folder"),  # downsampling
        ((300, 420), 256, "array"),
        ((200, 180), 256, "array"),  # upsampling
        ((512, 512), 1024, "folder"),
    ],
)
def test_video_parity_frames_not_at_model_size(pair, tmp_path, hw, image_size, source):
    ref, ours = pair(image_size)
    h, w = hw
    n = 3 if image_size == 1024 else 4
    folder = tmp_path / "frames"
    decoded = jpeg_folder(rgb_frames(n, h, w), folder)
    rs = ref.init_state(str(folder))
    st = ours.init_state(folder if source == "folder" else decoded)
    name = f"{h}x{w} at {image_size} from {source}"
    try:
        pts, labels = [[0.35 * w, 0.45 * h], [0.05 * w, 0.05 * h]], [1, 0]
        compare(name, ref.add_new_points_or_box(rs, 0, 1, points=pts, labels=labels),
                ours.add_new_points_or_box(st, 0, 1, points=pts, labels=labels))
        box = [0.08 * w, 0.68 * h, 0.32 * w, 0.92 * h]
        compare(name, ref.add_new_points_or_box(rs, 0, 2, box=box),
                ours.add_new_points_or_box(st, 0, 2, box=box))
        ref_run, our_run = list(ref.propagate_in_video(rs)), list(ours.propagate_in_video(st))
        assert [f for f, *_ in ref_run] == [f for f, *_ in our_run] == list(range(n))
        for a, b in zip(ref_run, our_run):
            compare(name, a, b)
    finally:
        st.close()


# ---------------------------------------------------------------------- the transform itself
def _reference_frame(frame: np.ndarray, size: int) -> torch.Tensor:
    """The reference loader's ``3×S×S`` input of one uint8 frame (via a lossless PNG)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    buffer.seek(0)
    img, _, _ = misc._load_img_as_tensor(buffer, size)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (img.float() - mean) / std


@pytest.mark.parametrize("hw, size", [((300, 420), 256), ((512, 512), 1024), ((90, 70), 256)])
def test_uint8_frames_resize_exactly_as_the_reference_loader(hw, size):
    frame = rgb_frames(1, *hw)[0]
    ours = video_frame_to_tensor(frame, size)
    expected = _reference_frame(frame, size)
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    assert (ours - expected).abs().max().item() < 1e-5
    # the image predictor's resize is another one (bilinear on floats): they really differ
    assert (image_to_tensor(frame, size) - expected).abs().max().item() > 0.1


def test_grey_uint8_frame_is_resized_as_8_bit_and_replicated():
    grey = rgb_frames(1, 300, 420)[0][..., 0]
    ours = video_frame_to_tensor(grey, 256)
    expected = _reference_frame(np.repeat(grey[..., None], 3, axis=2), 256)
    assert (ours - expected).abs().max().item() < 1e-5


def test_float_frames_use_the_same_kernel_without_8_bit_rounding():
    """16-bit data after normalisation: PIL's bicubic applied in float (mode ``F``, per
    channel), clipped to [0, 1] -- no rounding to 256 grey levels."""
    rng = np.random.default_rng(3)
    frame = rng.random((300, 420, 3), dtype=np.float32)
    frame[100:200, 100:200] = 1.0  # sharp edges overshoot with bicubic
    ours = video_frame_to_tensor(frame, 256)
    pil = np.stack(
        [np.asarray(Image.fromarray(frame[..., c]).resize((256, 256), Image.Resampling.BICUBIC))
         for c in range(3)]
    )
    expected = np.clip(pil, 0.0, 1.0)
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)
    assert pil.max() > 1.0  # the clip mattered
    assert np.abs(ours.numpy() * std + mean - expected).max() < 1e-5
    # not rounded to 8 bits: values between grey levels survive
    levels = (ours.numpy() * std + mean) * 255
    assert np.abs(levels - np.round(levels)).max() > 0.1


def test_frames_at_model_size_are_not_resampled():
    frame = rgb_frames(1, 256, 256)[0]
    x = video_frame_to_tensor(frame, 256)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    back = (x * std + mean) * 255
    assert (back - torch.from_numpy(frame).permute(2, 0, 1).float()).abs().max() < 1e-3
    f = frame.astype(np.float32) / 255
    assert torch.equal(
        video_frame_to_tensor(f, 256), (torch.from_numpy(f).permute(2, 0, 1) - mean) / std
    )


def test_every_stack_path_feeds_the_encoder_the_video_resize(pair, tmp_path):
    """``api.track`` (and so the command line), the pre-encoder and a 16-bit stack all reach
    the image encoder through :func:`video_frame_to_tensor`, not the image predictor's resize."""
    from napari_sam2 import api
    from napari_sam2.core.annotations import FramePrompt
    from napari_sam2.core.stacks.source import open_frames
    from napari_sam2.core.video.pre_encoder import PreEncoder

    _, ours = pair(256)
    model = ours.model
    seen: list[torch.Tensor] = []
    original = model.forward_image

    def forward_image(x):
        seen.append(x.detach().clone())
        return original(x)

    frames = rgb_frames(3, 300, 420)
    grey16 = (frames[..., 0].astype(np.uint16) * 40 + 300)
    with mock.patch.object(model, "forward_image", forward_image):
        prompt = FramePrompt(frame_idx=0, obj_id=1, points=np.array([[140.0, 135.0]]),
                             labels=np.array([1]))
        api.track(frames, [prompt], model=ours, direction="forward")
        assert len(seen) == 3
        for t, x in enumerate(seen):
            assert torch.equal(x[0], video_frame_to_tensor(frames[t], 256))

        seen.clear()
        state = ours.init_state(grey16)
        pre = PreEncoder(ours, state, radius=1)
        pre.focus(1)
        assert pre.wait_idle(timeout=120)
        pre.close()
        assert seen, "the pre-encoder encoded nothing"
        mapped = open_frames(grey16)
        for x in seen:
            matches = [t for t in range(3)
                       if torch.equal(x[0], video_frame_to_tensor(mapped.read(t), 256))]
            assert len(matches) == 1
        state.close()
