"""What stored embeddings are valid for.

A :class:`StoreKey` names everything, besides a frame's own pixels, that decides the features
the image encoder computes for it: the network (a digest of its weights and encoder settings,
see :func:`napari_sam2.models.identity.encoder_identity`), the precision it runs in, the input
path (SAM 2's video resize or its image resize), the intensity normalisation of the stack
(resolved limits), the frame shape and count, the store format and the package version. Two
keys with the same :attr:`StoreKey.digest` describe interchangeable features; anything else is
recomputed. The device is not part of it: features made on a GPU serve a laptop.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .signature import digest

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base
    from ..stacks.normalization import Normalization

__all__ = ["FORMAT", "INPUTS", "StoreKey"]

FORMAT = 1  # layout version of the store; a new layout never reads an old one
INPUTS = ("video", "image")  # SAM 2's video frame loader / its image transform


@functools.cache
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-sam2")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def normalization_record(normalization: Normalization | None) -> dict[str, Any] | None:
    """A resolved :class:`Normalization` as plain JSON values (``None``: image used as is)."""
    if normalization is None:
        return None
    record = dataclasses.asdict(normalization)
    return {k: _plain(v) for k, v in record.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


@dataclass(frozen=True)
class StoreKey:
    """The settings stored features were computed under (all part of :attr:`digest`).

    Attributes:
        encoder: ``{"weights": digest, "settings": {...}}`` of the network's feature extractor.
        precision: the network's precision mode (``"fp32"``, ``"fast"``, ``"bf16"``).
        input: ``"video"`` (SAM 2's video frame resize) or ``"image"`` (its image transform).
        normalization: the resolved intensity mapping as JSON values, or ``None``.
        frame_shape: shape of one raw frame (``H×W``, or with its channel axis).
        num_frames: frames in the stack.
        format: store layout version.
        package: napari-sam2 version that wrote the features.
        labels: for people only (model and config names), not part of the digest.
    """

    encoder: dict[str, Any]
    precision: str
    input: str
    normalization: dict[str, Any] | None
    frame_shape: tuple[int, ...]
    num_frames: int
    format: int = FORMAT
    package: str = field(default_factory=_package_version)
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {', '.join(INPUTS)}, got {self.input!r}")

    @classmethod
    def for_model(
        cls, model: SAM2Base, *, input: str, normalization: Normalization | None,
        frame_shape: tuple[int, ...], num_frames: int,
    ) -> StoreKey:
        """The key of features ``model`` computes now for frames of this stack."""
        from ...models.identity import encoder_identity

        labels = {
            "model": str(getattr(model, "checkpoint_name", "") or "unnamed weights"),
            "config": str(getattr(model, "config_name", "") or type(model).__name__),
        }
        return cls(
            encoder=encoder_identity(model),
            precision=str(getattr(model, "precision", "fp32")),
            input=input,
            normalization=normalization_record(normalization),
            frame_shape=tuple(int(s) for s in frame_shape),
            num_frames=int(num_frames),
            labels=labels,
        )

    def to_json(self) -> dict[str, Any]:
        """The key as JSON values (``labels`` included)."""
        record = dataclasses.asdict(self)
        record["frame_shape"] = list(self.frame_shape)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> StoreKey:
        """The inverse of :meth:`to_json`; raises ``ValueError`` for a malformed record."""
        try:
            names = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in record.items() if k in names}
            values["frame_shape"] = tuple(int(s) for s in values["frame_shape"])
            values["num_frames"] = int(values["num_frames"])
            return cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not a store key: {err}") from None

    @property
    def digest(self) -> str:
        """32 hex digits naming the key (``labels`` excluded)."""
        record = self.to_json()
        record.pop("labels")
        return digest(record)


# What a difference between two keys means to the person who chose the settings.
_SETTING_NAMES = {
    "encoder": "model", "precision": "precision", "input": "input path",
    "normalization": "contrast", "frame_shape": "frame size", "num_frames": "frame count",
    "format": "store format", "package": "napari-sam2 version",
}


def key_differences(a: StoreKey, b: StoreKey) -> list[str]:
    """The settings in which ``a`` and ``b`` differ, in words (``["contrast", "model"]``);
    empty for keys of the same features."""
    ra, rb = a.to_json(), b.to_json()
    return [name for field_, name in _SETTING_NAMES.items() if ra.get(field_) != rb.get(field_)]

