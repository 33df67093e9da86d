"""Configs: the 8 bundled configs give the reference's state-dict layout; reference-style and
fine-tuning YAML files are accepted; bad configs give clear errors; Hydra's global state is
untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_sam2.models.build import ConfigError, available_configs, build_model, load_config

from ..conftest import reference_config_name

ALL_CONFIGS = [
    f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in ("t", "s", "b+", "l")
]
REFERENCE_CONFIGS = Path(__import__("sam2").__file__).parent / "configs"


def _reference_on_meta(config: str, image_size: int = 1024) -> torch.nn.Module:
    from hydra import compose
    from hydra.utils import instantiate

    cfg = compose(
        config_name=reference_config_name(config),
        overrides=[f"++model.image_size={image_size}"],
    )
    linspace = torch.linspace

    def linspace_on_cpu(*args, **kwargs):  # the reference reads drop-path rates with .item()
        return linspace(*args, **{**kwargs, "device": "cpu"})

    torch.linspace = linspace_on_cpu
    try:
        with torch.device("meta"):
            return instantiate(cfg.model, _recursive_=True)
    finally:
        torch.linspace = linspace


def _layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_all_eight_configs_are_bundled() -> None:
    assert available_configs() == sorted(ALL_CONFIGS)


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_state_dict_layout_matches_reference(config: str) -> None:
    ours = _layout(build_model(config, device="meta"))
    ref = _layout(_reference_on_meta(config))
    assert sorted(set(ref) - set(ours)) == []  # missing in ours
    assert sorted(set(ours) - set(ref)) == []  # unexpected in ours
    assert ours == ref
    assert len(ours) > 400  # the whole network, not a fragment


@pytest.mark.parametrize("image_size", [256, 512])
def test_image_size_override(image_size: int) -> None:
    model = build_model("sam2.1_hiera_t", image_size=image_size, device="meta")
    assert model.image_size == image_size
    assert model.sam_prompt_encoder.image_embedding_size == (image_size // 16, image_size // 16)


def test_reference_yaml_is_accepted() -> None:
    path = REFERENCE_CONFIGS / "sam2.1" / "sam2.1_hiera_s.yaml"
    model = build_model(path, device="meta")
    assert type(model).__module__.startswith("napari_sam2.")
    assert _layout(model) == _layout(build_model("sam2.1_hiera_s", device="meta"))


def test_finetuning_yaml_is_accepted() -> None:
    path = REFERENCE_CONFIGS / "sam2.1_training" / "sam2.1_hiera_b+_MOSE_finetune.yaml"
    model = build_model(path, image_size=256, device="meta")
    assert model.image_size == 256
    assert _layout(model) == _layout(build_model("sam2.1_hiera_b+", image_size=256, device="meta"))


def test_postprocessing_settings_follow_the_reference() -> None:
    cfg = load_config("sam2.1_hiera_t")
    assert cfg.sam_mask_decoder_extra_args.dynamic_multimask_via_stability is True
    assert "sam_mask_decoder_extra_args" not in load_config("sam2.1_hiera_t", postprocessing=False)
    video = load_config("sam2.1_hiera_t", video=True)
    assert video.binarize_mask_from_pts_for_mem_enc is True and video.fill_hole_area == 8


def test_overrides_are_merged() -> None:
    model = build_model("sam2.1_hiera_t", overrides={"num_maskmem": 3}, device="meta")
    assert model.num_maskmem == 3
    assert tuple(model.maskmem_tpos_enc.shape)[0] == 3


def test_unknown_config_name() -> None:
    with pytest.raises(ConfigError, match="sam2.1_hiera_t"):
        build_model("sam2.1_hiera_tinyy")


def test_config_without_model(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("foo: 1\n")
    with pytest.raises(ConfigError, match="no 'model' entry"):
        load_config(path)


def test_config_with_foreign_target(tmp_path: Path) -> None:
    path = tmp_path / "foreign.yaml"
    path.write_text("model:\n  _target_: mypackage.MyNet\n")
    with pytest.raises(ConfigError, match="does not provide"):
        load_config(path)


def test_config_with_wrong_argument(tmp_path: Path) -> None:
    text = (REFERENCE_CONFIGS / "sam2.1" / "sam2.1_hiera_t.yaml").read_text()
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace("embed_dim: 96", "embed_dimm: 96"))
    with pytest.raises(ConfigError, match="embed_dimm"):
        build_model(path, device="meta")


def test_broken_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="Could not read"):
        load_config(path)


@pytest.mark.parametrize("size", [100, 2048])
def test_bad_image_size(size: int) -> None:
    with pytest.raises(ConfigError, match="image_size"):
        load_config("sam2.1_hiera_t", image_size=size)


def test_building_does_not_initialise_global_hydra() -> None:
    code = (
        "from hydra.core.global_hydra import GlobalHydra\n"
        "from napari_sam2.models.build import build_model\n"
        "build_model('sam2.1_hiera_t', device='meta')\n"
        "assert not GlobalHydra.instance().is_initialized(), 'global Hydra state was set'\n"
        "import sys; assert 'sam2' not in sys.modules, 'the reference was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
