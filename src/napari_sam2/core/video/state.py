"""Typed state of one video (stack) tracked by
:class:`~napari_sam2.core.video.predictor.SAM2VideoPredictor`.

* :class:`TempOutput` -- a result of a click or mask prompt not yet committed to the memory
  bank (committed, with its memory encoded, when propagation starts);
* :class:`ObjectState` -- one object's prompts, uncommitted results and tracking directions;
* :class:`VideoInferenceState` -- everything about one stack: the lazy frames, the feature
  cache, the per-frame result store and the objects (in the order they were added, which is
  the order of the masks returned by the predictor).

The result of one object on one frame is a
:class:`~napari_sam2.core.video.frame_output.FrameOutput`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .frame_output import FrameOutput

if TYPE_CHECKING:
    from ..stacks.source import FrameSource
    from ..store.stack_store import FeatureStore
    from .feature_cache import FeatureCache
    from .results import ResultStore

__all__ = ["ObjectState", "TempOutput", "VideoInferenceState"]

# Values of ObjectState.tracked: the direction a frame was last tracked in.
NOT_TRACKED, FORWARD, REVERSE = -1, 0, 1


@dataclass(frozen=True, eq=False)
class TempOutput:
    """Result of a prompt on one frame, kept until the next propagation commits it.

    ``is_cond``: it will become a conditioning frame (always read by later frames) rather than
    an ordinary tracked frame.
    """

    output: FrameOutput
    is_cond: bool


@dataclass(eq=False)
class ObjectState:
    """Prompts and bookkeeping of one object.

    Attributes:
        obj_id: the caller's id of the object (any hashable, usually an int / label value).
        key: internal key of the object in the frame store (never reused within a state).
        point_inputs: frame -> ``{"point_coords": 1×N×2, "point_labels": 1×N}`` clicks (and box
            corners) in model-input pixels.
        mask_inputs: frame -> ``1×1×S×S`` float 0/1 mask prompt at the model input size.
        temp_outputs: frame -> results of prompts not yet committed (insertion order kept).
        tracked: per frame, the direction it was last tracked in (``-1`` never, ``0``
            forward, ``1`` in reverse); a click on a tracked frame is a correction.
    """

    obj_id: Hashable
    key: int
    num_frames: int
    point_inputs: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    mask_inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    temp_outputs: dict[int, TempOutput] = field(default_factory=dict)
    tracked: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.tracked = np.full(self.num_frames, NOT_TRACKED, dtype=np.int8)

    @property
    def input_frames(self) -> list[int]:
        """Frames with a click, box or mask prompt of this object, sorted."""
        return sorted(set(self.point_inputs) | set(self.mask_inputs))


@dataclass(eq=False)
class VideoInferenceState:
    """State of one stack; create it with ``SAM2VideoPredictor.init_state``.

    Close it (or use it as a context manager, or call ``reset_state``) to delete the
    temporary files of results spilled to disk; it is also cleaned up when garbage-collected.

    Attributes:
        frames: the lazy frame source (closed with the state when the state opened it).
        owns_frames: the state opened ``frames`` and closes it.
        device: where the model runs.
        storage_device: where results in RAM are kept (CPU with ``offload_state_to_cpu``).
        feature_cache: image-encoder features of recently used frames.
        results: per-object, per-frame results (bounded in RAM, spilled to disk).
        store: the stack's embedding store behind the feature cache, or ``None``.
        objects: ``obj_id -> ObjectState`` in the order the objects were added.
    """

    frames: FrameSource
    owns_frames: bool
    device: torch.device
    storage_device: torch.device
    feature_cache: FeatureCache
    results: ResultStore
    store: FeatureStore | None = None
    objects: OrderedDict[Hashable, ObjectState] = field(default_factory=OrderedDict)
    next_object_key: int = 0
    closed: bool = False

    # ------------------------------------------------------------------ description
    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

    @property
    def video_height(self) -> int:
        return int(self.frames.frame_shape[0])

    @property
    def video_width(self) -> int:
        return int(self.frames.frame_shape[1])

    @property
    def obj_ids(self) -> list[Hashable]:
        """Object ids in model order (the order of the returned masks)."""
        return list(self.objects)

    @property
    def obj_id_to_idx(self) -> dict[Hashable, int]:
        return {obj_id: i for i, obj_id in enumerate(self.objects)}

    @property
    def obj_idx_to_id(self) -> dict[int, Hashable]:
        return dict(enumerate(self.objects))

    _COMPAT_KEYS = ("num_frames", "video_height", "video_width", "obj_ids", "device",
                    "storage_device", "obj_id_to_idx", "obj_idx_to_id")

    def __getitem__(self, key: str) -> Any:
        """Read-only access with the reference's dict keys, e.g. ``state["video_height"]``."""
        if key not in self._COMPAT_KEYS:
            raise KeyError(
                f"{key!r}: the state is a typed object; readable keys are "
                f"{', '.join(self._COMPAT_KEYS)} (use its attributes for the rest)."
            )
        return getattr(self, key)

    # ------------------------------------------------------------------ objects
    def add_object(self, obj_id: Hashable) -> ObjectState:
        """Register a new object (at the end of the model order)."""
        obj = ObjectState(obj_id=obj_id, key=self.next_object_key, num_frames=self.num_frames)
        self.next_object_key += 1
        self.results.add_object(obj.key)
        self.objects[obj_id] = obj
        return obj

    def remove_object(self, obj_id: Hashable) -> None:
        obj = self.objects.pop(obj_id)
        self.results.remove_object(obj.key)

    def clear_objects(self) -> None:
        """Forget all objects, prompts and results (frames and cached features are kept)."""
        self.objects.clear()
        self.results.clear()

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Delete spilled results and cached features; close the frames if the state opened
        them. Idempotent; the state cannot be used afterwards."""
        if self.closed:
            return
        self.closed = True
        self.objects.clear()
        self.results.close()
        self.feature_cache.clear()
        if self.owns_frames:
            self.frames.close()

    def __enter__(self) -> VideoInferenceState:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "VideoInferenceState(closed)"
        return (
            f"VideoInferenceState({self.num_frames} frames of {self.video_height}×"
            f"{self.video_width}, objects {self.obj_ids}, "
            f"{self.results.in_memory_count()} results in RAM)"
        )
