"""``napari-sam2 demo``: napari with the sample time-lapse and the SAM 2 dock widget.

napari and Qt are imported only when the command runs, so that the other commands never load
them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .common import EXIT_OK, add_common_options, say
from .model_options import check_model

__all__ = ["DEMO_NO_RUN_ENV", "add_parser", "run"]

#: Set to 1 to make ``napari-sam2 demo`` build the viewer and return without the event loop.
DEMO_NO_RUN_ENV = "NAPARI_SAM2_DEMO_NO_RUN"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command to the subcommands ``sub``."""
    p = sub.add_parser("demo", help="open napari with a sample time-lapse and the SAM 2 widget")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="load this model into the widget, e.g. a local checkpoint file to work "
                        "offline (default: choose in the widget)")
    p.add_argument("--config", default=None, metavar="CFG",
                   help="config name or YAML for a checkpoint file (default: inferred)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="model input size (default: the widget's setting)")
    p.add_argument("--no-run", action="store_true", help=argparse.SUPPRESS)
    add_common_options(p)
    p.set_defaults(func=run)


def _widget_name() -> str:
    """Display name of this plugin's dock widget, from its npe2 manifest."""
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest("napari-sam2")
    widgets = list(manifest.contributions.widgets or [])
    if not widgets:
        raise RuntimeError("this installation of napari-sam2 has no dock widget")
    return widgets[0].display_name


def run(args: argparse.Namespace) -> int:
    """Open napari with the sample time-lapse and the dock widget (and ``--model`` loaded)."""
    no_run = args.no_run or os.environ.get(DEMO_NO_RUN_ENV, "") not in ("", "0")
    model = None
    if args.model is not None:
        check_model(args.model)
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
        say(f"demo ready: layers [{layers}], dock widget {type(widget).__name__}")
        if no_run:
            if model is not None:
                _wait_until_idle(widget)
                if getattr(widget, "model", None) is None:
                    raise RuntimeError(f"the widget could not load {model}")
                say(f"model {args.model} loaded")
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
