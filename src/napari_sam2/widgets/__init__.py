"""Qt dock widgets; the only part of the package that imports Qt.

:class:`SAM2Widget` (``napari_sam2.widgets.SAM2Widget``) is the dock widget the plugin manifest
offers as "SAM 2 Segmentation". Files:

* ``_widget.py`` -- the Qt widget: controls (``_ui.py``), signals, slots;
* ``_controller.py`` / ``_actions.py`` -- its behaviour and scripting API (layers, model,
  prompts; propagation, cancel, segment everything);
* ``_session.py`` -- the Qt-free session: prompts per (frame, object) -> predictor -> masks;
* ``_workers.py`` / ``_jobs.py`` / ``_runs.py`` -- napari ``thread_worker`` jobs, run one at a
  time, and the main-thread side of a propagation;
* ``_labels_writer.py`` -- main-thread, undoable writes that touch only the tracked objects;
* ``_layers.py`` / ``_prompting.py`` -- the image's geometry, the Labels and prompt layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._widget import SAM2Widget

__all__ = ["SAM2Widget"]


def __getattr__(name: str) -> Any:
    if name == "SAM2Widget":
        from ._widget import SAM2Widget

        return SAM2Widget
    raise AttributeError(f"module 'napari_sam2.widgets' has no attribute {name!r}")
