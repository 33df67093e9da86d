"""Noticing that a layer a job reads or writes was given new data (``layer.data = ...``).

A propagation reads frames from the image it started on and writes into one Labels layer; a
precompute run encodes the image's frames. If the user (or a script) replaces such a layer's
data mid-job, the job's results would belong to data that is no longer shown, so the job is
stopped. Painting (``data_setitem``) is not a replacement and is not reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["DataWatch"]


class DataWatch:
    """Call ``on_replaced(layer)`` once, the first time any of ``layers`` gets new data.

    Args:
        layers: napari layers (``None`` entries are skipped).
        on_replaced: called on the main thread with the layer whose data was replaced; the
            watch is closed before the call.
    """

    def __init__(self, layers: Iterable[Any], on_replaced: Callable[[Any], None]) -> None:
        self._layers = [layer for layer in layers if layer is not None]
        self._on_replaced = on_replaced
        for layer in self._layers:
            layer.events.data.connect(self._replaced)

    def _replaced(self, event: Any) -> None:
        layer = event.source
        self.close()
        self._on_replaced(layer)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        layers, self._layers = self._layers, []
        for layer in layers:
            try:
                layer.events.data.disconnect(self._replaced)
            except (RuntimeError, TypeError, ValueError):  # already gone with its layer
                pass
