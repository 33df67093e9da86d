"""Build the SAM 2 network from a YAML config.

Configs use ``_target_`` entries and are instantiated with ``hydra.utils.instantiate`` on a plain
OmegaConf node; Hydra's global state is never initialised, so host applications that use Hydra
themselves are unaffected. Configs written for the reference ``sam2`` package (targets
``sam2.modeling...``), including fine-tuning configs (``trainer.model``), are mapped onto our
classes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import torch

    from .sam2 import SAM2Base

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "available_configs",
    "resolve_config",
    "load_config",
    "build_model",
]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"

_PKG = "napari_sam2.models"
# Class name -> our module. Targets from the reference (sam2.modeling.*, training.model.*) map by
# class name, so a user's YAML keeps working whatever sub-package it spells.
_OUR_CLASSES = {
    "SAM2Base": "sam2",
    "SAM2Train": "sam2",
    "SAM2VideoPredictor": "sam2",
    "SAM2VideoPredictorVOS": "sam2",
    "ImageEncoder": "image_encoder",
    "FpnNeck": "image_encoder",
    "Hiera": "hiera",
    "PositionEmbeddingSine": "position_encoding",
    "PositionEmbeddingRandom": "position_encoding",
    "MemoryAttention": "memory_attention",
    "MemoryAttentionLayer": "memory_attention",
    "Attention": "attention",
    "RoPEAttention": "attention",
    "MemoryEncoder": "memory_encoder",
    "MaskDownSampler": "memory_encoder",
    "Fuser": "memory_encoder",
    "CXBlock": "memory_encoder",
}
_MODEL_CLASS_ALIASES = {"SAM2Train", "SAM2VideoPredictor", "SAM2VideoPredictorVOS"}

# What the reference's builders add for inference ("apply_postprocessing").
_POSTPROCESSING = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
}
_VIDEO_POSTPROCESSING = {"binarize_mask_from_pts_for_mem_enc": True, "fill_hole_area": 8}


class ConfigError(ValueError):
    """A model config that cannot be found, read or built."""


def available_configs() -> list[str]:
    """Names of the bundled configs, e.g. ``"sam2.1_hiera_t"``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*/*.yaml"))


def resolve_config(config: str | os.PathLike) -> Path:
    """Find a config file from a bundled name or a path.

    Accepts ``"sam2.1_hiera_t"``, ``"sam2.1_hiera_t.yaml"``, the reference's spelling
    ``"configs/sam2.1/sam2.1_hiera_t.yaml"``, or the path of a YAML file.
    """
    path = Path(config)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    for candidate in CONFIG_DIR.glob(f"*/{stem}.yaml"):
        return candidate
    raise ConfigError(
        f"No model config {str(config)!r}: it is neither a file nor one of the bundled configs "
        f"({', '.join(available_configs())})."
    )


def _map_target(target: str) -> str:
    if target.startswith(_PKG + "."):
        return target
    cls = target.rsplit(".", 1)[-1]
    if cls not in _OUR_CLASSES:
        raise ConfigError(
            f"The config asks for {target!r}, which napari-sam2 does not provide. "
            f"Supported classes: {', '.join(sorted(_OUR_CLASSES))}."
        )
    if cls in _MODEL_CLASS_ALIASES:
        cls = "SAM2Base"
    return f"{_PKG}.{_OUR_CLASSES[cls]}.{cls}"


def _map_targets(node: Any) -> Any:
    """Rewrite every ``_target_`` in a plain nested dict/list onto our classes."""
    if isinstance(node, dict):
        return {
            k: (_map_target(v) if k == "_target_" else _map_targets(v)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_map_targets(v) for v in node]
    return node


def _drop_unknown_model_kwargs(model: dict) -> dict:
    """Remove training-only arguments (e.g. of ``SAM2Train``) that our model does not take."""
    import inspect

    from .sam2 import SAM2Base

    accepted = set(inspect.signature(SAM2Base.__init__).parameters)
    dropped = sorted(k for k in model if k not in accepted and k != "_target_")
    if dropped:
        logger.info("Ignoring config entries used only for training: %s", ", ".join(dropped))
    return {k: v for k, v in model.items() if k not in dropped}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    config: str | os.PathLike,
    image_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    postprocessing: bool = True,
    video: bool = False,
) -> DictConfig:
    """Read a config and return its ``model`` node, targets mapped onto our classes.

    Args:
        config: bundled config name or YAML path (see :func:`resolve_config`).
        image_size: model input size; the network accepts multiples of 256 up to 1024.
        overrides: nested dict merged into the model node, e.g. ``{"num_maskmem": 5}``.
        postprocessing: add the inference settings the reference's builders add
            (dynamic multimask fallback when a single mask is unstable).
        video: also add the reference's video-predictor settings (binarised click masks in
            memory, filling small holes).
    """
    path = resolve_config(config)
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors come in many types
        raise ConfigError(f"Could not read model config {path}: {err}") from err
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"Model config {path} must be a YAML mapping with a 'model' entry.")
    if "model" in raw:
        node = raw.model
    elif "trainer" in raw and "model" in raw.trainer:
        node = raw.trainer.model
    else:
        raise ConfigError(
            f"Model config {path} has no 'model' entry (nor 'trainer.model' as in a fine-tuning "
            "config); is it a SAM 2 config?"
        )
    try:
        model = OmegaConf.to_container(node, resolve=True)
    except Exception as err:
        raise ConfigError(f"Could not resolve the interpolations in {path}: {err}") from err
    if not isinstance(model, dict) or "_target_" not in model:
        raise ConfigError(f"The 'model' entry of {path} must be a mapping with a '_target_'.")
    model = _drop_unknown_model_kwargs(_map_targets(model))
    if postprocessing:
        model = _merge(model, _POSTPROCESSING)
    if video:
        model = _merge(model, _VIDEO_POSTPROCESSING)
    if image_size is not None:
        if image_size % 256 or not 256 <= image_size <= 1024:
            raise ConfigError(f"image_size must be 256, 512, 768 or 1024, got {image_size}.")
        model["image_size"] = int(image_size)
    if overrides:
        model = _merge(model, _map_targets(overrides))
    return OmegaConf.create(model)


def build_model(
    config: str | os.PathLike,
    image_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    postprocessing: bool = True,
    video: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> SAM2Base:
    """Instantiate an (untrained) SAM 2 network from a config; see :func:`load_config`.

    ``device="meta"`` builds it without allocating weights (for inspecting keys and shapes).
    ``precision`` is ``"auto"`` (chosen for ``device`` by measurement), ``"fp32"``, ``"fast"``
    or ``"bf16"`` (see :mod:`napari_sam2.models.precision`). The model is returned in eval mode.
    """
    from .precision import PRECISIONS, set_precision

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    import torch
    from hydra.utils import instantiate

    cfg = load_config(config, image_size, overrides, postprocessing, video)
    try:
        with torch.device(device):
            model = instantiate(cfg, _recursive_=True, _convert_="all")
    except Exception as err:
        raise ConfigError(f"Could not build the network from {config}: {err}") from err
    model.config_name = Path(str(config)).name.removesuffix(".yaml")  # for display only
    return set_precision(model.eval(), precision)
