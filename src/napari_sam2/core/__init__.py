"""Everything a script needs, with no Qt and no napari imports, in wings by concept:

* :mod:`~napari_sam2.core.stacks` -- reading data lazily, axes, intensities, model input;
* :mod:`~napari_sam2.core.image` -- one image: predictor, automatic mask generator;
* :mod:`~napari_sam2.core.video` -- a stack followed through time: predictor, tracking;
* :mod:`~napari_sam2.core.annotations` -- napari's Points/Shapes/CSV conventions, labels.

Wings depend downward only: annotations and video -> image -> stacks (and all -> models).
The names below are exported here so that user code need not know the wings; they are
imported on first use, so ``import napari_sam2.core`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .annotations import FramePrompt
    from .image.mask_generator import SAM2AutomaticMaskGenerator
    from .image.predictor import SAM2ImagePredictor
    from .stacks.normalization import Normalization
    from .stacks.source import FrameSource, open_frames
    from .video.pre_encoder import PreEncoder
    from .video.predictor import SAM2VideoPredictor

# Public name -> module that defines it (PEP 562).
_LAZY = {
    "SAM2ImagePredictor": ".image.predictor",
    "SAM2AutomaticMaskGenerator": ".image.mask_generator",
    "SAM2VideoPredictor": ".video.predictor",
    "PreEncoder": ".video.pre_encoder",
    "FrameSource": ".stacks.source",
    "open_frames": ".stacks.source",
    "Normalization": ".stacks.normalization",
    "FramePrompt": ".annotations",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_sam2.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
