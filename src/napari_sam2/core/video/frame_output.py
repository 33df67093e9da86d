"""The result of one object on one frame, as the memory bank and the results store keep it:
what later frames read (memory features, object pointer, presence score) and what a later
correction click starts from (low-resolution mask logits)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

__all__ = ["FrameOutput"]


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
