"""Qt dock widgets; the only part of the package that imports Qt.

:class:`SAM2Widget` (``napari_sam2.widgets.SAM2Widget``) is the dock widget the plugin manifest
offers as "SAM 2 Segmentation". Files:

* ``_widget.py`` -- the view: lays out the controls (``_ui.py``), owns a controller, passes
  the user's choices to it and shows its signals; the scripting API forwards to it;
* ``_controller.py`` -- the controller (a ``QObject``, no Qt widgets): layers, model, session
  and prompt syncing, jobs, propagation with cancel, segment everything, precision;
* ``_pre_encoding.py`` -- the background pre-encoder's lifetime, owned by the controller;
* ``_session.py`` -- the Qt-free session: prompts per (frame, object) -> predictor -> masks;
* ``_workers.py`` / ``_jobs.py`` / ``_runs.py`` -- napari ``thread_worker`` jobs, run one at a
  time, and the main-thread side of a propagation;
* ``_labels_writer.py`` -- main-thread, undoable writes that never overwrite other labels
  unless asked to;
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
