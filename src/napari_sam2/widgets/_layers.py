"""napari layers of a segmentation: the image's geometry, the output Labels layer and the two
prompt layers (Points for clicks, Shapes for boxes). napari imports, no Qt.

Prompt layers follow the convention of :mod:`napari_sam2.core.annotations`: a Points layer's
``features`` has ``obj_id`` (the label value) and ``positive`` (foreground click) columns, with
``feature_defaults`` so new points get the current object and polarity; a Shapes layer's
rectangles carry ``obj_id`` the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.annotations import (
    FramePrompt,
    merge_prompts,
    point_features,
    prompts_from_boxes,
    prompts_from_points,
)
from ._labels_writer import FramePlacement

__all__ = [
    "MAX_LABEL",
    "POSITIVE_COLORS",
    "StackGeometry",
    "box_vertices",
    "make_boxes_layer",
    "make_labels_layer",
    "make_points_layer",
    "plane_coords",
    "read_prompts",
    "spatial_shape",
]

POSITIVE_COLORS = {True: "lime", False: "red"}
MAX_LABEL = 2**31 - 1  # the largest object id offered for new prompts


def image_data(layer: Any) -> Any:
    """Full-resolution data of an Image layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape of an Image layer without its RGB(A) channel axis: what its Labels must have."""
    shape = tuple(int(s) for s in image_data(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


class _OneFrame:
    """A 2D image (H×W or H×W×C) seen as a one-frame stack, without copying it."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.shape = (1, *tuple(int(s) for s in data.shape))
        self.dtype = data.dtype

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if key[0] not in (0, -1):
            raise IndexError(f"a one-frame stack has only frame 0, got {key[0]}")
        return np.asarray(self.data[key[1:]])


@dataclass(frozen=True)
class StackGeometry:
    """How an Image layer is read as a stack of 2D frames.

    Attributes:
        ndim: dimensions of the image without an RGB axis (2 for one image).
        rgb: whether the layer's last data axis holds RGB(A) channels.
        frame_axis: the followed axis (``None`` for 2D).
        position: index of every other non-spatial axis, ``{axis: index}``.
    """

    ndim: int
    rgb: bool
    frame_axis: int | None
    position: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, layer: Any, frame_axis: int | None, current: tuple[int, ...]) -> StackGeometry:
        """Geometry of ``layer`` following ``frame_axis`` with the other non-spatial axes at
        ``current`` (the layer's current data indices, one per non-RGB axis)."""
        ndim = len(spatial_shape(layer))
        if ndim == 2:
            return cls(2, bool(layer.rgb), None)
        if frame_axis is None or not 0 <= frame_axis < ndim - 2:
            frame_axis = 0
        pos = tuple((a, int(current[a])) for a in range(ndim - 2) if a != frame_axis)
        return cls(ndim, bool(layer.rgb), frame_axis, pos)

    @property
    def placement(self) -> FramePlacement:
        return FramePlacement(self.ndim, self.frame_axis, dict(self.position))

    def open_frames(self, layer: Any, normalization: Any = None, **kwargs: Any) -> Any:
        """A lazy :class:`~napari_sam2.core.stacks.source.FrameSource` over the layer's data."""
        from ..core.stacks.source import open_frames

        data = image_data(layer)
        if self.frame_axis is None:
            data = _OneFrame(data)
            return open_frames(
                data, frame_axis=0, channel_axis=-1 if self.rgb else None,
                normalization=normalization, **kwargs,
            )
        return open_frames(
            data, frame_axis=self.frame_axis, channel_axis=data.ndim - 1 if self.rgb else None,
            position=dict(self.position) or None, normalization=normalization, **kwargs,
        )

    def on_plane(self, coords: np.ndarray) -> np.ndarray:
        """Rows of ``N×ndim`` coordinates that lie on the followed plane (other axes at
        :attr:`position`)."""
        keep = np.ones(len(coords), dtype=bool)
        for axis, index in self.position:
            keep &= np.round(coords[:, axis]) == index
        return keep


def plane_coords(position: Sequence[float], current: tuple[int, ...]) -> np.ndarray:
    """Data coordinates of ``position``: all ``len(current)`` of them, or ``(y, x)`` on the
    current slice, whose other indices are taken from ``current`` (the image's current data
    indices, one per non-RGB axis)."""
    coords = np.asarray(position, dtype=float)
    ndim = len(current)
    if coords.shape[-1] == 2 and ndim > 2:
        lead = np.asarray(current[:-2], dtype=float)
        lead = np.broadcast_to(lead, (*coords.shape[:-1], ndim - 2))
        coords = np.concatenate([lead, coords], axis=-1)
    if coords.shape[-1] != ndim:
        raise ValueError(f"Give {ndim} coordinates (data order, …, y, x) or just (y, x).")
    return coords


def box_vertices(corner: np.ndarray, opposite: np.ndarray) -> np.ndarray:
    """The four vertices of the rectangle with two opposite corners, in napari's order:
    ``(y0, x0), (y0, x1), (y1, x1), (y1, x0)`` (the other coordinates those of ``corner``
    and ``opposite``)."""
    verts = np.array([corner, corner, opposite, opposite], dtype=float)
    verts[1, -1], verts[3, -1] = opposite[-1], corner[-1]
    return verts


def _like(image: Any) -> dict[str, Any]:
    """Scale and translate of ``image`` (without the RGB axis) so coordinates line up."""
    return {"scale": tuple(image.scale), "translate": tuple(image.translate)}


def make_labels_layer(image: Any, name: str | None = None) -> Any:
    """A new, empty ``uint32`` Labels layer over ``image``."""
    from napari.layers import Labels

    data = np.zeros(spatial_shape(image), dtype=np.uint32)
    return Labels(data, name=name or f"{image.name} masks", **_like(image))


def _empty_features() -> pd.DataFrame:
    return pd.DataFrame(
        {"obj_id": pd.Series([], dtype="int64"), "positive": pd.Series([], dtype=bool)}
    )


def make_points_layer(image: Any, obj_id: int = 1, positive: bool = True) -> Any:
    """An empty Points layer for clicks: green = positive, red = negative."""
    from napari.layers import Points

    ndim = len(spatial_shape(image))
    return Points(
        np.empty((0, ndim)), ndim=ndim, name=f"{image.name} clicks",
        features=_empty_features(), feature_defaults={"obj_id": obj_id, "positive": positive},
        face_color="positive", face_color_cycle=POSITIVE_COLORS, border_color="white",
        size=max(4.0, min(spatial_shape(image)[-2:]) / 40), **_like(image),
    )


def make_boxes_layer(image: Any, obj_id: int = 1) -> Any:
    """An empty Shapes layer whose rectangles are box prompts."""
    from napari.layers import Shapes

    ndim = len(spatial_shape(image))
    features = pd.DataFrame({"obj_id": pd.Series([], dtype="int64")})
    return Shapes(
        ndim=ndim, name=f"{image.name} boxes", features=features,
        feature_defaults={"obj_id": obj_id}, face_color="transparent", edge_color="yellow",
        edge_width=max(1.0, min(spatial_shape(image)[-2:]) / 200), **_like(image),
    )


def read_prompts(points: Any, boxes: Any, geometry: StackGeometry) -> list[FramePrompt]:
    """The prompts on the followed plane, from the Points and Shapes layers (either may be
    ``None``); other shapes than rectangles are ignored."""
    frame_axis = geometry.frame_axis
    groups: list[list[FramePrompt]] = []
    if points is not None and len(points.data):
        coords = np.asarray(points.data, dtype=np.float64)
        positive, obj_ids = point_features(points.features, len(coords))
        keep = geometry.on_plane(coords)
        groups.append(
            prompts_from_points(coords[keep], positive[keep], obj_ids[keep], frame_axis=frame_axis)
        )
    if boxes is not None and len(boxes.data):
        latest: dict[tuple[int, int], np.ndarray] = {}  # SAM takes one box per object and frame
        feats = boxes.features
        for i, (verts, kind) in enumerate(zip(boxes.data, boxes.shape_type)):
            verts = np.asarray(verts, dtype=np.float64)
            if kind != "rectangle" or not geometry.on_plane(verts).all():
                continue
            obj = int(feats["obj_id"].iloc[i]) if "obj_id" in feats else 1
            frame = 0 if frame_axis is None else int(np.round(verts[0, frame_axis]))
            latest[(frame, obj)] = verts  # the newest box of an object on a frame wins
        if latest:
            groups.append(prompts_from_boxes(
                list(latest.values()), [obj for _, obj in latest], frame_axis=frame_axis
            ))
    return merge_prompts(*groups)
