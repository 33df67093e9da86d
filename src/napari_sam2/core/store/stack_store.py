"""A stack's (or an image's) embedding store as the feature caches use it.

:class:`FeatureStore` binds an :class:`~napari_sam2.core.store.embedding_store.EmbeddingStore`
to the network whose features it keeps: it stores what ``SAM2Base.forward_image`` returns for
a frame (the FPN levels, in the dtypes the precision produced them) and gives back the same
``backbone_fpn`` and ``vision_pos_enc`` lists, the position encodings rebuilt rather than
stored (they depend only on the grid and its dtype).

:func:`open_stack_store` and :func:`open_image_store` turn the ``store=`` argument of the
predictors and the API into a store: ``None`` the default location in the user cache,
``False`` none, a path that store, an :class:`EmbeddingStore` itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...models.common import version_key
from .embedding_store import EmbeddingStore, StoreError
from .key import StoreKey
from .location import default_store_path, evict
from .signature import frame_signature

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base
    from ..stacks.normalization import Normalization
    from ..stacks.source import FrameSource

__all__ = [
    "FeatureStore",
    "StoreSpec",
    "check_store_spec",
    "open_image_store",
    "open_stack_store",
    "stack_identity",
]

StoreSpec = Any  # None | False | str | os.PathLike | EmbeddingStore

_POSITION_CANDIDATES = (torch.float32, torch.bfloat16, torch.float16)


def check_store_spec(store: StoreSpec) -> None:
    """Raise ``TypeError`` unless ``store`` is ``None``, ``False``, a path or a store."""
    if store is None or store is False or isinstance(store, (str, os.PathLike, EmbeddingStore)):
        return
    raise TypeError(
        "store must be None (the default location), False (no store), a path or an "
        f"EmbeddingStore; got {store!r}"
    )


class FeatureStore:
    """Frame features of one network kept in an :class:`EmbeddingStore`.

    The key follows the network: if its weights or precision change (a new checkpoint, the
    widget's precision setting), the next call reads and writes the features of the new key
    in the same store, and the old key's features stay for when it is used again.

    Args:
        model: the network whose ``forward_image`` output is stored.
        store: where, opened for the key ``make_key()`` returns now.
        make_key: the key of the features ``model`` computes now.
    """

    def __init__(
        self, model: SAM2Base, store: EmbeddingStore, make_key: Callable[[], StoreKey]
    ) -> None:
        self.model = model
        self.store = store
        self._make_key = make_key
        self._marker = self._model_marker()
        self._position_dtypes: list[str] | None = None
        self._requested_read_only = store.read_only

    def _model_marker(self) -> tuple:
        params = list(self.model.image_encoder.parameters())
        return (getattr(self.model, "precision", None), version_key(*params), len(params))

    def _current(self) -> EmbeddingStore:
        """The store opened for the network's settings now."""
        marker = self._model_marker()
        if marker != self._marker or marker[1] is None:
            key = self._make_key()
            if key.digest != self.store.key.digest:
                old = self.store
                self.store = EmbeddingStore.open(
                    old.path, key, stack=old.stack, read_only=self._requested_read_only,
                    codec=old.codec,
                )
                self._position_dtypes = None
            self._marker = marker
        return self.store

    def load(
        self, index: int, signature: str, device: torch.device
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """``(backbone_fpn, vision_pos_enc)`` of frame ``index`` (batch 1, on ``device``) if
        stored for a frame with ``signature``, else ``None``."""
        store = self._current()
        levels = store.read(index, signature, device)
        if levels is None:
            return None
        meta = store.levels
        sizes = [tuple(int(s) for s in m["shape"][1:]) for m in meta]
        dtypes = [getattr(torch, m["positions"]) for m in meta]
        pos = self.model.image_encoder.positions(sizes, dtypes, device)
        return levels, pos

    def has(self, index: int, signature: str) -> bool:
        """Whether frame ``index`` is stored for a frame with ``signature``."""
        return self._current().has(index, signature)

    def complete(self) -> np.ndarray:
        """``T`` bool: frames with stored features (under the network's key now)."""
        return self._current().complete()

    def save(
        self, index: int, signature: str, fpn: list[torch.Tensor], pos: list[torch.Tensor]
    ) -> bool:
        """Store one frame's ``forward_image`` output (``fpn``/``pos`` lists, batch 1)."""
        store = self._current()
        if store.read_only:
            return False
        if self._position_dtypes is None:
            self._position_dtypes = self._find_position_dtypes(fpn, pos)
        return store.write(index, signature, fpn, self._position_dtypes)

    def _find_position_dtypes(
        self, fpn: list[torch.Tensor], pos: list[torch.Tensor]
    ) -> list[str]:
        """The dtype each level's position encoding was rounded to (the dtype of the neck's
        output there): the candidate whose rebuilt encoding equals the one computed."""
        names = []
        for f, p in zip(fpn, pos):
            size = (int(f.shape[-2]), int(f.shape[-1]))
            for dtype in (p.dtype, *_POSITION_CANDIDATES):
                rebuilt = self.model.image_encoder.positions([size], [dtype], p.device)[0]
                if rebuilt.dtype == p.dtype and torch.equal(rebuilt[0], p[0]):
                    names.append(str(dtype).removeprefix("torch."))
                    break
            else:
                raise StoreError(
                    "the image encoder's position encodings cannot be rebuilt from their "
                    "grid; this network's features cannot be stored"
                )
        return names

    def __repr__(self) -> str:
        return f"FeatureStore({self.store!r})"


def stack_identity(frames: FrameSource) -> dict[str, Any]:
    """What names a stack across sessions and programs: its shape, dtype and the axes
    followed, and the signatures of its first, middle and last frames.

    The pixels, not the file name: a stack embedded by ``napari-sam2 embed stack.tif`` and the
    same file opened in napari (an array then) find the same default store, and so does a
    moved or renamed file. Two stacks that share these three frames share a store, which is
    safe: every frame is checked against its own signature before its features are used.
    """
    from ..stacks.source import frame_read_lock

    n = frames.num_frames
    with frame_read_lock(frames):
        signatures = [frame_signature(frames.read_raw(i)) for i in sorted({0, n // 2, n - 1})]
    return {
        "shape": [int(s) for s in frames.shape],
        "dtype": str(frames.dtype),
        "frame_axis": int(frames.frame_axis),
        "channel_axis": frames.channel_axis,
        "position": {str(k): int(v) for k, v in sorted(frames.position.items())},
        "frames": signatures,
    }


def _open(
    store: StoreSpec, key: StoreKey, identity: dict[str, Any], name: str, read_only: bool,
    overwrite: bool,
) -> EmbeddingStore | None:
    check_store_spec(store)
    if store is False:
        return None
    if isinstance(store, EmbeddingStore):
        if store.key.digest != key.digest:
            raise StoreError(
                f"the store {store.path} was opened for other settings than this data and "
                "model use; open it again, or pass store=None to use the default location"
            )
        return store
    description = {"name": name, **{k: v for k, v in identity.items() if k != "first_frame"}}
    if store is None:
        path = default_store_path(identity)
        opened = EmbeddingStore.open(path, key, stack=description, read_only=read_only,
                                     overwrite=True)
        if not opened.read_only:
            evict(keep=(opened.variant,))
        return opened
    return EmbeddingStore.open(
        store, key, stack=description, read_only=read_only, overwrite=overwrite
    )


def open_stack_store(
    store: StoreSpec, model: SAM2Base, frames: FrameSource, *, read_only: bool = False,
    overwrite: bool = False,
) -> FeatureStore | None:
    """The store of a stack's video-path features (``None`` for ``store=False``).

    A default-location store that is damaged or foreign is replaced (it is a cache); at a
    path the user gave, that raises :class:`StoreError` unless ``overwrite``.
    """
    check_store_spec(store)
    if store is False:
        return None

    def make_key() -> StoreKey:
        return StoreKey.for_model(
            model, input="video", normalization=frames.normalization,
            frame_shape=frames.raw_frame_shape, num_frames=frames.num_frames,
        )

    opened = _open(store, make_key(), stack_identity(frames), frames.name, read_only, overwrite)
    return None if opened is None else FeatureStore(model, opened, make_key)


def open_image_store(
    store: StoreSpec, model: SAM2Base, image: np.ndarray,
    normalization: Normalization | None, *, read_only: bool = False, overwrite: bool = False,
) -> tuple[FeatureStore, str] | None:
    """The store of one image's image-path features and the image's signature (``None`` for
    ``store=False``). ``image`` is the model-ready image (``H×W×3``); at the default location
    each image has its own store, named by its signature."""
    check_store_spec(store)
    if store is False:
        return None
    signature = frame_signature(image)

    def make_key() -> StoreKey:
        return StoreKey.for_model(
            model, input="image", normalization=normalization, frame_shape=tuple(image.shape),
            num_frames=1,
        )

    identity = {"image": signature, "shape": [int(s) for s in image.shape],
                "dtype": str(image.dtype)}
    opened = _open(store, make_key(), identity, f"image {image.shape} {signature[:8]}",
                   read_only, overwrite)
    return None if opened is None else (FeatureStore(model, opened, make_key), signature)
