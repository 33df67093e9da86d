"""The two prompt layers of one image and their interaction: which object and polarity new
clicks get, Shift-click for a negative click, key bindings, and change notifications.

No Qt here; the widget passes a callback that is called (on the main thread) whenever the
prompts may have changed: a point or rectangle added, moved, deleted, or its features edited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._layers import make_boxes_layer, make_points_layer

__all__ = ["PromptLayers"]

_DONE_ACTIONS = {"added", "removed", "changed"}  # not the "adding"/"changing" previews


class PromptLayers:
    """Points (clicks) and Shapes (boxes) layers of one image, created or reused.

    Args:
        viewer: the napari viewer.
        image: the Image layer being segmented.
        on_change: called with no argument after any edit of the prompts.
        on_toggle, on_new_object: called by the N and M key bindings.
        obj_id, positive: defaults for new prompts.
    """

    def __init__(
        self, viewer: Any, image: Any, on_change: Callable[[], None],
        on_toggle: Callable[[], None], on_new_object: Callable[[], None],
        obj_id: int = 1, positive: bool = True,
    ) -> None:
        self.viewer, self.image = viewer, image
        self._on_change, self._on_toggle, self._on_new = on_change, on_toggle, on_new_object
        self.obj_id, self.positive = obj_id, positive
        self.points: Any = None
        self.boxes: Any = None
        self._shift_click = False
        self._listening: set[str] = set()  # roles whose layer events are connected
        self._holding = False  # inside defaults(): other defaults on purpose

    # ------------------------------------------------------------------ layers
    def ensure(self) -> None:
        """Create (or find again) both layers and listen to them; keeps the active layer."""
        active = self.viewer.layers.selection.active
        if self.points is None or self.points not in self.viewer.layers:
            self.points = self._find("clicks") or self._add(
                make_points_layer(self.image, self.obj_id, self.positive), "clicks"
            )
            self._listening.discard("clicks")
        if self.boxes is None or self.boxes not in self.viewer.layers:
            self.boxes = self._find("boxes") or self._add(
                make_boxes_layer(self.image, self.obj_id), "boxes"
            )
            self._listening.discard("boxes")
        if "clicks" not in self._listening:
            self._connect_points(self.points)
            self._listening.add("clicks")
        if "boxes" not in self._listening:
            self._connect_common(self.boxes)
            self._listening.add("boxes")
        self.set_defaults(self.obj_id, self.positive)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def _find(self, role: str) -> Any:
        for layer in self.viewer.layers:
            meta = layer.metadata.get("napari_sam2", {})
            if meta.get("role") == role and meta.get("image") == self.image.name:
                return layer
        return None

    def _add(self, layer: Any, role: str) -> Any:
        layer.metadata["napari_sam2"] = {"role": role, "image": self.image.name}
        self.viewer.add_layer(layer)
        return layer

    def _connect_common(self, layer: Any) -> None:
        layer.events.data.connect(self._data_event)
        layer.events.features.connect(self._changed)
        # napari makes the properties of selected (e.g. just added) items the defaults for the
        # next ones; the widget's object and polarity stay authoritative instead.
        layer.events.current_properties.connect(self._enforce_defaults)
        layer.bind_key("n", lambda _layer: self._on_toggle(), overwrite=True)
        layer.bind_key("m", lambda _layer: self._on_new(), overwrite=True)

    def _connect_points(self, layer: Any) -> None:
        self._connect_common(layer)
        if self._on_press not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.insert(0, self._on_press)
        layer.mode = "add"

    def disconnect(self) -> None:
        """Stop listening to both layers (they stay in the viewer)."""
        for layer in (self.points, self.boxes):
            if layer is None:
                continue
            for emitter, slot in ((layer.events.data, self._data_event),
                                  (layer.events.features, self._changed),
                                  (layer.events.current_properties, self._enforce_defaults)):
                emitter.disconnect(slot)
            if self._on_press in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._on_press)
            for key in ("n", "m"):
                layer.bind_key(key, None)
        self._listening.clear()

    def forget(self, layer: Any) -> bool:
        """Drop ``layer`` if it is one of ours (it was deleted); returns whether it was."""
        if self.points is not None and layer == self.points:
            self.points = None
            return True
        if self.boxes is not None and layer == self.boxes:
            self.boxes = None
            return True
        return False

    # ------------------------------------------------------------------ defaults
    def set_defaults(self, obj_id: int, positive: bool) -> None:
        """Object and polarity of the next click / box."""
        self.obj_id, self.positive = int(obj_id), bool(positive)
        if self.points is not None:
            self.points.feature_defaults = {"obj_id": self.obj_id, "positive": self.positive}
        if self.boxes is not None:
            self.boxes.feature_defaults = {"obj_id": self.obj_id}

    @contextmanager
    def defaults(self, obj_id: int, positive: bool = True) -> Iterator[None]:
        """Within the block, new clicks / boxes get ``obj_id`` and ``positive`` (scripts)."""
        self._holding = True
        try:
            if self.points is not None:
                self.points.feature_defaults = {"obj_id": int(obj_id), "positive": bool(positive)}
            if self.boxes is not None:
                self.boxes.feature_defaults = {"obj_id": int(obj_id)}
            yield
        finally:
            self._holding = False
            self.set_defaults(self.obj_id, self.positive)

    def object_ids(self) -> set[int]:
        """Object ids used by any click or box."""
        ids: set[int] = set()
        for layer in (self.points, self.boxes):
            if layer is not None and len(layer.data) and "obj_id" in layer.features:
                ids |= {int(v) for v in layer.features["obj_id"]}
        return ids

    # ------------------------------------------------------------------ events
    def _on_press(self, layer: Any, event: Any) -> None:
        """Shift-click in add mode: the click about to be added is a negative one."""
        shift = layer.mode == "add" and "Shift" in event.modifiers
        if shift != self._shift_click:
            self._shift_click = shift
            positive = self.positive and not shift
            layer.feature_defaults = {"obj_id": self.obj_id, "positive": positive}

    def _data_event(self, event: Any) -> None:
        if str(getattr(event, "action", "changed")) not in _DONE_ACTIONS:
            return
        if self._shift_click and str(event.action) == "added":
            self._shift_click = False
            self.set_defaults(self.obj_id, self.positive)
        self._on_change()

    def _enforce_defaults(self, event: Any = None) -> None:
        if self._shift_click or self._holding:
            return
        for layer, wanted in ((self.points, {"obj_id": self.obj_id, "positive": self.positive}),
                              (self.boxes, {"obj_id": self.obj_id})):
            if layer is None:
                continue
            defaults = layer.feature_defaults
            now = {k: defaults[k].iloc[0] for k in wanted if k in defaults}
            if now != wanted:
                layer.feature_defaults = wanted

    def _changed(self, event: Any = None) -> None:
        self._on_change()
