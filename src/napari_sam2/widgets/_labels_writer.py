"""Main-thread, undoable writes of object masks into a napari Labels layer.

Rules (issue 5, "safety of the user's labels"):

* a write touches only the object ids it is given: for object ``k`` it sets ``k`` where the
  mask is on *and* the pixel is 0 or already ``k``, and clears (sets 0) the pixels that are
  ``k`` where the mask is off;
* labels of any other object -- painted by hand, committed earlier, or made by "segment
  everything" -- are never overwritten, unless the writer was made with ``overwrite=True``;
* new labels (:func:`write_new_labels`, "segment everything") go only into pixels that are 0;
* every write goes through :meth:`napari.layers.Labels.data_setitem`, so napari's undo works.
  One write is one undo step; the writes of a *run* (a propagation, see
  :meth:`LabelsWriter.begin_run`) are staged with napari's public ``Labels.block_history()``
  and committed together, so one ``layer.undo()`` reverts a whole propagation.

Only call these functions on the main (Qt) thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FramePlacement",
    "LabelsWriter",
    "check_label_values",
    "labels_max",
    "merge_object_masks",
    "write_new_labels",
]


@dataclass(frozen=True)
class FramePlacement:
    """Where frame ``t`` of a :class:`~napari_sam2.core.stacks.source.FrameSource` lies in an
    ``ndim``-dimensional Labels layer whose last two axes are Y, X.

    Attributes:
        ndim: dimensions of the Labels layer (2 for one image).
        frame_axis: the followed axis, or ``None`` for a 2D image (a one-frame stack).
        position: ``{axis: index}`` of every other non-spatial axis (e.g. the current z-plane
            while following time through a T×Z×Y×X stack).
    """

    ndim: int
    frame_axis: int | None = None
    position: Mapping[int, int] = field(default_factory=dict)

    def key(self, frame_idx: int) -> tuple[Any, ...]:
        """Basic index of the ``H×W`` plane of frame ``frame_idx``."""
        if self.frame_axis is None:
            if frame_idx != 0:
                raise IndexError(f"a 2D image has only frame 0, got {frame_idx}")
            return (slice(None), slice(None))
        out: list[Any] = []
        for axis in range(self.ndim - 2):
            if axis == self.frame_axis:
                out.append(int(frame_idx))
            else:
                out.append(int(self.position[axis]))
        return (*out, slice(None), slice(None))

    def full_indices(
        self, frame_idx: int, yx: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, ...]:
        """Fancy indices into the whole layer for the pixels ``yx`` of frame ``frame_idx``."""
        ys, xs = yx
        n = ys.shape[0]
        lead = [np.full(n, k, dtype=np.intp) for k in self.key(frame_idx)[:-2]]
        return (*lead, ys.astype(np.intp), xs.astype(np.intp))


def merge_object_masks(
    old: np.ndarray, masks: Mapping[int, np.ndarray], overwrite: bool = False
) -> np.ndarray:
    """New ``H×W`` labels after writing ``{obj_id: H×W bool mask}`` into ``old`` (not modified).

    Pixels of other ids are kept unless ``overwrite``; the first object in ``masks`` wins
    where two written objects overlap on a free pixel.
    """
    new = old.copy()
    for obj_id, mask in masks.items():
        new[(old == obj_id) & ~mask] = 0
    for obj_id, mask in masks.items():
        target = mask if overwrite else mask & ((new == 0) | (new == obj_id))
        new[target] = obj_id
    return new


def check_label_values(layer: Any, largest: int) -> None:
    """Refuse label values that the layer's integer dtype cannot hold (they would wrap)."""
    dtype = np.dtype(layer.data.dtype)
    if dtype.kind in "iu" and largest > np.iinfo(dtype).max:
        raise ValueError(
            f"Label {largest} does not fit the {dtype} labels layer {layer.name!r} (at most "
            f"{np.iinfo(dtype).max}); choose or create a labels layer with a larger dtype."
        )


def labels_max(layer: Any) -> int:
    """The largest label value in ``layer`` (0 for no layer or an empty one)."""
    if layer is None or not layer.data.size:
        return 0
    return int(np.max(layer.data))


def write_new_labels(
    layer: Any, placement: FramePlacement, frame_idx: int, found: np.ndarray, offset: int
) -> int:
    """Write ``found`` (``H×W`` labels ``1..N``, 0 for none) into frame ``frame_idx`` as the
    values ``offset + 1 ..``, only where the layer's plane is 0, in one undo step; returns how
    many label values were written. Raises ``ValueError`` (writing nothing) if the layer's
    dtype cannot hold them."""
    plane = np.asarray(layer.data[placement.key(frame_idx)])
    free = np.nonzero((plane == 0) & (found > 0))
    values = found[free].astype(np.int64) + offset
    check_label_values(layer, int(values.max()) if values.size else 0)
    values = values.astype(layer.data.dtype)
    if free[0].size:
        with layer.block_history():
            layer.data_setitem(placement.full_indices(frame_idx, free), values)
    return int(np.unique(values).size)


class LabelsWriter:
    """Writes object masks frame by frame into ``layer`` (main thread only).

    Args:
        layer: the napari Labels layer.
        placement: maps frame indices to planes of the layer.
        overwrite: also overwrite pixels of other ids (default: never).
    """

    def __init__(self, layer: Any, placement: FramePlacement, overwrite: bool = False) -> None:
        self.layer = layer
        self.placement = placement
        self.overwrite = overwrite
        self._run: ExitStack | None = None

    # -- runs -------------------------------------------------------------------------
    def begin_run(self) -> None:
        """Group the following writes (until :meth:`end_run`) into one undo step.

        This holds napari's public ``Labels.block_history()`` context open across the run: the
        writes are staged and committed together by :meth:`end_run`. (A hand-painted stroke
        finished during the run commits what was staged so far; the run then continues as
        one undo step per frame, so undo stays exact.)
        """
        if self._run is None:
            self._run = ExitStack()
            self._run.enter_context(self.layer.block_history())

    def end_run(self) -> None:
        """Commit the run's writes as one undo step (idempotent)."""
        run, self._run = self._run, None
        if run is not None:
            run.close()

    # -- writing ----------------------------------------------------------------------
    def write(self, frame_idx: int, masks: Mapping[int, np.ndarray]) -> int:
        """Write ``{obj_id: H×W bool}`` into frame ``frame_idx``; returns the pixels changed."""
        if not masks:
            return 0
        layer = self.layer
        key = self.placement.key(frame_idx)
        old = np.asarray(layer.data[key])
        masks = {int(k): np.asarray(m, dtype=bool) for k, m in masks.items()}
        for obj_id, mask in masks.items():
            if mask.shape != old.shape:
                raise ValueError(
                    f"mask of object {obj_id} has shape {mask.shape}, but the labels plane of "
                    f"frame {frame_idx} is {old.shape}"
                )
        check_label_values(layer, max(masks))
        new = merge_object_masks(old, masks, self.overwrite)
        changed = np.nonzero(new != old)
        if changed[0].size == 0:
            return 0
        indices = self.placement.full_indices(frame_idx, changed)
        values = new[changed].astype(layer.data.dtype, copy=False)
        if self._run is not None:
            layer.data_setitem(indices, values)
        else:
            with layer.block_history():  # exactly one undo step for this write
                layer.data_setitem(indices, values)
        return int(changed[0].size)
