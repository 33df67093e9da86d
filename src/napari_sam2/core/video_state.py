"""Typed state of one video (stack) tracked by :class:`~napari_sam2.core.video_predictor.SAM2VideoPredictor`.

* :class:`FrameOutput` -- the compact result of one object on one frame: what later frames
  read from the memory bank (memory features, object pointer, presence score) and what a
  later correction click starts from (low-resolution mask logits);
* :class:`TempOutput` -- a result of a click or mask prompt not yet committed to the memory
  bank (committed, with its memory encoded, when propagation starts);
* :class:`ObjectState` -- one object's prompts, uncommitted results and tracking directions;
* :class:`VideoInferenceState` -- everything about one stack: the lazy frames, the feature
  cache, the per-frame result store and the objects (in the order they were added, which is
  the order of the masks returned by the predictor).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .feature_cache import FeatureCache
    from .frame_source import FrameSource
    from .frame_store import FrameStore

__all__ = ["FrameOutput", "ObjectState", "TempOutput", "VideoInferenceState"]

# Values of ObjectState.tracked: the direction a frame was last tracked in.
NOT_TRACKED, FORWARD, REVERSE = -1, 0, 1


@dataclass(frozen=True, eq=False)
class FrameOutput(Mapping[str, Any]):
    """Compact output of one object (batch of 1) on one frame.

    It is also a read-only mapping with the keys of SAM 2's per-frame output dicts, so
    :meth:`SAM2Base.track_step` reads it as a memory-bank entry.

    Attributes:
        pred_masks: ``1×1×h×w`` float32 low-resolution mask logits (``h = image_size / 4``),
            after hole filling.
        obj_ptr: ``1×C`` object pointer.
        object_score_logits: ``1×1`` object-presence logit (> 0: visible).
        maskmem_features: ``1×C_mem×h'×w'`` bfloat16 spatial memory, or ``None`` (not encoded
            yet, or the model keeps no memory).
        maskmem_pos_enc: ``[1×C_mem×h'×w']`` position encoding of the memory; one tensor shared
            by all frames (it does not depend on the frame), ``None`` without memory.
    """

    pred_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor
    maskmem_features: torch.Tensor | None = None
    maskmem_pos_enc: list[torch.Tensor] | None = None

    _KEYS = ("maskmem_features", "maskmem_pos_enc", "pred_masks", "obj_ptr", "object_score_logits")

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    __eq__ = object.__eq__  # identity, not Mapping's element-wise comparison of tensors
    __hash__ = object.__hash__

    def with_memory(
        self, features: torch.Tensor | None, pos_enc: list[torch.Tensor] | None
    ) -> FrameOutput:
        """A copy with the given memory features and position encoding."""
        return replace(self, maskmem_features=features, maskmem_pos_enc=pos_enc)


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
        frame_store: per-object, per-frame results (bounded in RAM, spilled to disk).
        objects: ``obj_id -> ObjectState`` in the order the objects were added.
    """

    frames: FrameSource
    owns_frames: bool
    device: torch.device
    storage_device: torch.device
    feature_cache: FeatureCache
    frame_store: FrameStore
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
        self.frame_store.add_object(obj.key)
        self.objects[obj_id] = obj
        return obj

    def remove_object(self, obj_id: Hashable) -> None:
        obj = self.objects.pop(obj_id)
        self.frame_store.remove_object(obj.key)

    def clear_objects(self) -> None:
        """Forget all objects, prompts and results (frames and cached features are kept)."""
        self.objects.clear()
        self.frame_store.clear()

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Delete spilled results and cached features; close the frames if the state opened
        them. Idempotent; the state cannot be used afterwards."""
        if self.closed:
            return
        self.closed = True
        self.objects.clear()
        self.frame_store.close()
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
            f"{self.frame_store.in_memory_count()} results in RAM)"
        )
