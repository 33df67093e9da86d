"""One end-to-end forward (image encoder -> prompt -> mask decoder) per model size, ours against
the reference on the same weights loaded through the official checkpoint format."""

from __future__ import annotations

import pytest
import torch

CONFIGS = ["sam2.1_hiera_s", "sam2_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l", "sam2_hiera_l"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _click_forward(model: torch.nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    backbone = model.forward_image(image)
    _, feats, pos, sizes = model._prepare_backbone_features(backbone)
    # The image path of the predictors: no memory, the learned "no memory" token added.
    top = feats[-1] + model.no_mem_embed
    top = top.permute(1, 2, 0).view(1, -1, *sizes[-1])
    high_res = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(feats[:-1], sizes[:-1])]
    points = {
        "point_coords": torch.tensor([[[60.0, 80.0], [200.0, 150.0]]]),
        "point_labels": torch.tensor([[1, 0]], dtype=torch.int32),
    }
    out = model._forward_sam_heads(
        backbone_features=top,
        point_inputs=points,
        high_res_features=high_res,
        multimask_output=True,
    )
    names = ["low_res_multimasks", "high_res_multimasks", "ious", "low_res_masks",
             "high_res_masks", "obj_ptr", "object_score_logits"]
    result = dict(zip(names, out))
    result.update({f"fpn{i}": f for i, f in enumerate(backbone["backbone_fpn"])})
    return result


@pytest.mark.parametrize("config", CONFIGS)
def test_end_to_end_click(config: str, paired_models) -> None:
    ref, ours = paired_models(config, 256)
    torch.manual_seed(3)
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a = _click_forward(ref, image)
        b = _click_forward(ours, image)
    for name in a:
        diff = (a[name].float() - b[name].float()).abs().max().item()
        assert diff <= 1e-4, f"{config} {name}: {diff}"
