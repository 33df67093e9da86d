"""``napari-sam2 demo``: napari with the sample time-lapse and the SAM 2 dock widget.

Imported only by that command, so that the other commands never load napari or Qt.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .cli import EXIT_OK, _check_model, _say

__all__ = ["DEMO_NO_RUN_ENV", "run_demo"]

#: Set to 1 to make ``napari-sam2 demo`` build the viewer and return without the event loop.
DEMO_NO_RUN_ENV = "NAPARI_SAM2_DEMO_NO_RUN"


def _widget_name() -> str:
    """Display name of this plugin's dock widget, from its npe2 manifest."""
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest("napari-sam2")
    widgets = list(manifest.contributions.widgets or [])
    if not widgets:
        raise RuntimeError("this installation of napari-sam2 has no dock widget")
    return widgets[0].display_name


def run_demo(args: argparse.Namespace) -> int:
    """Open napari with the sample time-lapse and the dock widget (and ``--model`` loaded)."""
    no_run = args.no_run or os.environ.get(DEMO_NO_RUN_ENV, "") not in ("", "0")
    model = None
    if args.model is not None:
        _check_model(args.model)
        model = os.path.abspath(args.model) if Path(args.model).is_file() else args.model
    import napari

    viewer = napari.Viewer(title="napari-sam2 demo")
    try:
        viewer.open_sample("napari-sam2", "timelapse")
        _, widget = viewer.window.add_plugin_dock_widget("napari-sam2", _widget_name())
        if model is not None:
            widget.set_model(model, config=args.config, device=args.device,
                             image_size=args.image_size)
        layers = ", ".join(layer.name for layer in viewer.layers)
        _say(f"demo ready: layers [{layers}], dock widget {type(widget).__name__}")
        if no_run:
            if model is not None:
                _wait_until_idle(widget)
                if getattr(widget, "model", None) is None:
                    raise RuntimeError(f"the widget could not load {model}")
                _say(f"model {args.model} loaded")
            return EXIT_OK
        napari.run()
    finally:
        if no_run:
            viewer.close()
    return EXIT_OK


def _wait_until_idle(widget: Any, timeout: float = 300.0) -> None:
    """Process Qt events until the widget's background work (model loading) is done."""
    import time

    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while getattr(widget, "busy", False):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dock widget is still busy after {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()
