"""napari-sam2: Segment Anything 2 for microscopy images, z-stacks and time-lapses in napari.

Importing this package is cheap: it imports neither torch nor Qt (napari reads plugin
manifests at start-up). The network lives in :mod:`napari_sam2.models`, the Qt-free predictors
in :mod:`napari_sam2.core` and the dock widget in :mod:`napari_sam2.widgets`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-sam2")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from .api import segment_everything, segment_image, track
    from .core.annotations import FramePrompt, prompts_from_boxes, prompts_from_points
    from .models.checkpoints import load_model

# Public name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "load_model": ".models.checkpoints",
    "segment_image": ".api",
    "segment_everything": ".api",
    "track": ".api",
    "FramePrompt": ".core.annotations",
    "prompts_from_points": ".core.annotations",
    "prompts_from_boxes": ".core.annotations",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    # Heavy entry points are imported on first use only.
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_sam2' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
