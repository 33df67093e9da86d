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
    from .models.checkpoints import load_model

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    # Heavy entry points are imported on first use only.
    if name == "load_model":
        from .models.checkpoints import load_model

        return load_model
    raise AttributeError(f"module 'napari_sam2' has no attribute {name!r}")
