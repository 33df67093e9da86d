"""The bfloat16 mode against the reference: its own, looser parity check.

Strict parity (``precision="fast"``/``"fp32"``) is in ``test_predictor.py``. Here ours
runs in ``"bf16"``: the logits may differ by rounding of about 1 %, so the check is that the
masks agree on all but a few edge pixels, the logits stay close, and every object is found
on the same frames.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import sam2.sam2_video_predictor as svp
import torch
from sam2 import build_sam

from napari_sam2.core.video.predictor import SAM2VideoPredictor
from napari_sam2.models.checkpoints import load_model

from ...conftest import reference_config_name
from .test_predictor import OBJ_SCORE_SHIFT, click, make_frames, ref_init_state

CONFIG, SIZE = "sam2.1_hiera_t", 256
MAX_LOGIT_DIFF = 0.1  # logits are O(1-10); bfloat16 keeps ~3 significant digits
MIN_SAME_PIXELS = 0.995


@pytest.fixture(scope="module")
def pair(official_checkpoint):
    path = official_checkpoint(CONFIG, SIZE)
    ref = build_sam.build_sam2_video_predictor(
        reference_config_name(CONFIG), ckpt_path=str(path), device="cpu",
        hydra_overrides_extra=[f"++model.image_size={SIZE}"],
    ).eval()
    ref.fill_hole_area = 0
    model = load_model(path, config=CONFIG, device="cpu", image_size=SIZE, video=True,
                       precision="bf16")
    with torch.no_grad():
        for m in (ref, model):
            m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += OBJ_SCORE_SHIFT[CONFIG]
    return ref, SAM2VideoPredictor(model, fill_hole_area=0)


def test_bf16_tracking_agrees_with_the_reference(pair):
    ref, ours = pair
    assert ours.model.precision == "bf16"
    frames = make_frames(8, SIZE, SIZE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with mock.patch.object(svp, "tqdm", lambda it, **kw: it), torch.inference_mode():
            rs, st = ref_init_state(ref, frames), ours.init_state(frames)
            outputs = {"ref": [], "ours": []}
            for obj in (0, 1):
                for _, p, s in (("ref", ref, rs), ("ours", ours, st)):
                    p.add_new_points_or_box(s, 0, obj + 1, points=click(0, obj, SIZE, SIZE),
                                            labels=[1])
            for name, p, s in (("ref", ref, rs), ("ours", ours, st)):
                outputs[name] += [m for _, _, m in p.propagate_in_video(s)]
                p.add_new_points_or_box(s, 5, 1, points=click(5, 0, SIZE, SIZE), labels=[1])
                outputs[name] += [m for _, _, m in p.propagate_in_video(s, start_frame_idx=5)]
            st.close()
    finally:
        torch.set_num_threads(threads)

    diffs = [(a - b).abs().max().item() for a, b in zip(outputs["ref"], outputs["ours"])]
    same = np.mean([((a > 0) == (b > 0)).float().mean().item()
                    for a, b in zip(outputs["ref"], outputs["ours"])])
    found_ref = [(m > 0).flatten(1).any(1).tolist() for m in outputs["ref"]]
    found_ours = [(m > 0).flatten(1).any(1).tolist() for m in outputs["ours"]]
    assert 0 < max(diffs) < MAX_LOGIT_DIFF, max(diffs)  # computed in bfloat16, and close
    assert same >= MIN_SAME_PIXELS, same
    assert found_ref == found_ours
    assert all(m.dtype == torch.float32 for m in outputs["ours"])
