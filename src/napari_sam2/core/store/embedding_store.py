"""Image-encoder features of a stack on disk, one zarr chunk per frame, valid per frame.

Layout of a store (a zarr v3 group; any path, default in the user cache)::

    STORE.zarr/                      attrs["napari_sam2"] = {"kind": "embedding-store", ...}
        <key digest>/                one group per StoreKey (model, precision, input, ...)
            level_0 … level_{L-1}    T×C_i×H_i×W_i, chunks 1×C_i×H_i×W_i, blosc-lz4 + shuffle
            signature                T×2 uint64, chunks 1×2: the frame's signature, 0 = absent

Nothing else is written into the store: the file locks writers take live in the cache folder
(``.locks/`` beside the default stores), so a store on a read-only share is still readable.

A frame is used only when its stored signature equals the signature of the raw frame being
read now, so nothing stale is ever used: changed pixels recompute that frame, a changed model,
precision, input size or normalisation is another key and recomputes everything (the other
keys' features stay, so switching back costs nothing).

Safety under kills and concurrent writers:

* every chunk file is written to a temporary file and renamed into place (zarr's local
  store), so no reader ever sees half a chunk;
* a frame is written as: its signature cleared, its features, then its signature. A kill in
  between leaves a frame without signature, which is simply recomputed;
* readers check the signature before *and* after reading the features (a sequence lock), so
  a frame being rewritten by another process is a miss, never a mix;
* writers of one key take a file lock (:mod:`filelock`) around each frame
  and around creating the arrays, so two processes (a ``napari-sam2 embed`` and a widget
  session) never interleave the writes of one frame. Reading takes no lock.

A store that cannot be written (read-only folder or file system, ``read_only=True``) is read
as it is: no write is attempted and nothing fails; a disk that fills up stops the writes of
this session with one warning and the work goes on from RAM.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .folders import lock_for
from .key import FORMAT, StoreKey
from .signature import signature_words

__all__ = ["CODECS", "DEFAULT_CODEC", "EmbeddingStore", "StoreError"]

logger = logging.getLogger(__name__)

KIND = "embedding-store"
CODECS = ("blosc-lz4", "blosc-zstd", "zstd", "none")
# blosc-lz4: ~0.7-0.8 of the raw size, as small as blosc-zstd within 3 %, read in half its time
# (9 against 17 ms a frame at 512, fp32; benchmarks/embedding_store.py): a click on a stored
# frame waits for the read, so reading wins.
DEFAULT_CODEC = "blosc-lz4"
_STALE_PARTIAL_S = 600.0  # temporary chunk files older than this belong to a killed writer
_TOUCH_EVERY_S = 60.0

# Arrays already opened in this process, by (variant folder, mode): reopening a stack (a new
# session on the same data, the widget's next layer) then costs a few stat calls instead of
# reading every array's metadata. An entry is used only while the files it was opened from
# are the same files (zarr rewrites metadata through a rename, so a new inode).
_OPENED: dict[tuple[str, str], tuple[tuple, Any, list[Any], Any, list[dict[str, Any]]]] = {}
_OPENED_LOCK = threading.Lock()


def _layout_marker(variant: Path) -> tuple | None:
    """What tells that the variant's arrays are still the ones opened (``None``: missing)."""
    try:
        group = os.stat(variant / "zarr.json")
        first = os.stat(variant / "level_0" / "zarr.json")
        signature = os.stat(variant / "signature" / "zarr.json")
    except OSError:
        return None
    return (group.st_ino, first.st_ino, first.st_mtime_ns, signature.st_ino,
            signature.st_mtime_ns)


class StoreError(RuntimeError):
    """A path that holds something other than an embedding store (or a damaged one)."""


def _compressors(codec: str) -> tuple[Any, ...]:
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "blosc-zstd":
        return (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),)
    if codec == "blosc-lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    if codec == "zstd":
        return (ZstdCodec(level=1),)
    if codec == "none":
        return ()
    raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU copy of ``t`` as numpy (bfloat16 as its ``uint16`` bits)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _restore(a: np.ndarray, meta: dict[str, Any], device: torch.device) -> torch.Tensor:
    """A stored ``C×H×W`` map as the ``1×C×H×W`` tensor the encoder gave, in its dtype and
    memory layout (e.g. channels-last): some kernels round differently by layout, and a
    stored frame must give exactly the masks of a computed one."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if meta["dtype"] == "bfloat16":
        t = t.view(torch.int16).view(torch.bfloat16)
    t = t[None]
    strides = meta.get("strides")
    if strides is None or tuple(strides) == t.stride():
        return t.to(device)
    out = torch.empty_strided(t.shape, tuple(strides), dtype=t.dtype, device=device)
    return out.copy_(t)


_READERS: ThreadPoolExecutor | None = None


def _read_chunks(arrays: Sequence[Any], index: int) -> list[np.ndarray]:
    """``[a[index] for a in arrays]``, the chunks read and decompressed side by side (the
    codecs release the GIL: about 0.6x the time of reading them one after the other)."""
    global _READERS
    if len(arrays) < 2:
        return [a[index] for a in arrays]
    if _READERS is None:
        with _OPENED_LOCK:
            if _READERS is None:
                _READERS = ThreadPoolExecutor(4, thread_name_prefix="napari-sam2-store")
    return list(_READERS.map(lambda a: a[index], arrays))


def _same_key(meta: dict[str, Any], key: StoreKey) -> bool:
    """Whether a variant's metadata was written for ``key``."""
    try:
        return StoreKey.from_json(meta.get("key", {})).digest == key.digest
    except (ValueError, TypeError, AttributeError):
        return False


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _writable(path: Path) -> bool:
    """Whether ``path`` (or, when it does not exist, its nearest existing parent) can be
    written by this process."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return os.access(probe, os.W_OK)


def check_store_path(path: Path, overwrite: bool = False) -> bool:
    """Whether ``path`` holds one of our stores (``False``: nothing there yet).

    Raises :class:`StoreError` for anything else there -- a file, a folder of other files, a
    zarr that is not ours, an unreadable ``zarr.json`` -- unless ``overwrite``, which removes
    it.
    """
    if not path.exists():
        return False
    problem = None
    if not path.is_dir():
        problem = "is a file, not a store folder"
    elif not (path / "zarr.json").exists():
        if not any(path.iterdir()):
            return False
        problem = "holds files but no zarr.json: it is not an embedding store"
    else:
        try:
            meta = _read_json(path / "zarr.json")
            ours = meta.get("attributes", {}).get("napari_sam2", {})
            if meta.get("node_type") != "group" or ours.get("kind") != KIND:
                problem = "is a zarr written by something else, not a napari-sam2 embedding store"
            elif ours.get("format") != FORMAT:
                problem = (
                    f"is an embedding store of format {ours.get('format')!r}; this version "
                    f"reads format {FORMAT}"
                )
        except (OSError, ValueError, AttributeError) as err:
            problem = f"has an unreadable zarr.json ({err})"
    if problem is None:
        return True
    if not overwrite:
        raise StoreError(
            f"{path} {problem}. Choose another store path, or replace it with "
            "overwrite=True (command line: --overwrite)."
        )
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return False


class EmbeddingStore:
    """Stored image features of one stack under one :class:`StoreKey`.

    Use :meth:`open`. :meth:`read` returns a frame's feature maps if they were stored for the
    same raw frame; :meth:`write` stores them. Thread-safe for one process (zarr arrays and
    the file lock are; each call reads or writes whole chunks).

    Attributes:
        path: the store folder.
        key: what the features are valid for.
        read_only: no write is attempted.
    """

    def __init__(
        self, path: Path, key: StoreKey, read_only: bool, codec: str, stack: dict[str, Any]
    ) -> None:
        self.path = path
        self.key = key
        self.read_only = read_only
        self.codec = codec
        self._compressors = _compressors(codec)
        self.stack = stack
        self.variant = path / key.digest[:16]
        self._group: Any = None
        self._levels: list[Any] = []
        self._level_meta: list[dict[str, Any]] = []
        self._signatures: Any = None
        self._write_failed = False
        self._partials_checked = False
        self._last_touch = 0.0
        self.reads = 0  # frames served
        self.writes = 0  # frames written

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, path: str | os.PathLike, key: StoreKey, *, stack: dict[str, Any] | None = None,
        read_only: bool = False, overwrite: bool = False, codec: str = DEFAULT_CODEC,
    ) -> EmbeddingStore:
        """Open (creating if needed) the store at ``path`` for features under ``key``.

        Args:
            path: the store folder (``….zarr``).
            key: the settings of the features to read and write.
            stack: a description of the data (name, shape, dtype) kept for listings.
            read_only: never write; also chosen when the folder cannot be written.
            overwrite: replace whatever else is at ``path`` (otherwise :class:`StoreError`).
            codec: compression of new arrays (one of :data:`CODECS`).
        """
        _compressors(codec)  # validates
        path = Path(path).expanduser().absolute()
        exists = check_store_path(path, overwrite=overwrite and not read_only)
        read_only = read_only or not _writable(path)
        store = cls(path, key, read_only, codec, dict(stack or {}))
        if read_only:
            if exists:
                store._open_variant()
            return store
        try:
            store._create()
        except OSError as err:  # e.g. a file system that refuses writes
            warnings.warn(
                f"Embedding store {path} cannot be written ({err}); it is used read-only.",
                RuntimeWarning, stacklevel=2,
            )
            store.read_only = True
            if exists:
                store._open_variant()
        return store

    def _lock(self, folder: Path) -> Any:
        return lock_for(folder)

    def _create(self) -> None:
        import zarr

        meta = self._variant_meta() if (self.path / "zarr.json").exists() else None
        if meta is not None and _same_key(meta, self.key):  # there already: no lock needed
            self._open_variant()
            self.touch(force=True)
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock(self.path):
            if not (self.path / "zarr.json").exists():
                root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
                root.attrs.put({"napari_sam2": {
                    "kind": KIND, "format": FORMAT, "stack": self.stack,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }})
            self.variant.mkdir(exist_ok=True)
        with self._lock(self.variant):
            meta = self._variant_meta()
            if meta is None or not _same_key(meta, self.key):
                if meta is not None:
                    logger.warning("replacing damaged features %s", self.variant)
                    for child in self.variant.iterdir():
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
                group = zarr.open_group(str(self.variant), mode="a", zarr_format=3)
                group.attrs.put({"napari_sam2": {"key": self.key.to_json(), "levels": []}})
        self._open_variant()
        self.touch(force=True)

    def _variant_meta(self) -> dict[str, Any] | None:
        try:
            return _read_json(self.variant / "zarr.json")["attributes"]["napari_sam2"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _open_variant(self) -> None:
        """Open the key's group and, once a first frame has laid them out, its arrays."""
        import zarr

        if self._levels:
            return
        mode = "r" if self.read_only else "r+"
        marker = _layout_marker(self.variant)
        if marker is None:
            return
        with _OPENED_LOCK:
            opened = _OPENED.get((str(self.variant), mode))
        if opened is not None and opened[0] == marker:
            _, self._group, self._levels, self._signatures, self._level_meta = opened
            return
        meta = self._variant_meta()
        if meta is None or not _same_key(meta, self.key):
            return
        levels = list(meta.get("levels", []))
        if not levels:
            return
        try:
            group = zarr.open_group(str(self.variant), mode=mode)
            arrays = [group[f"level_{i}"] for i in range(len(levels))]
            signatures = group["signature"]
        except Exception as err:  # noqa: BLE001 - missing or unreadable arrays: none yet
            logger.debug("store %s not readable yet: %s", self.variant, err)
            return
        self._group, self._level_meta = group, levels
        self._levels, self._signatures = arrays, signatures
        if _layout_marker(self.variant) == marker:  # nobody rewrote it while we read it
            with _OPENED_LOCK:
                _OPENED[(str(self.variant), mode)] = (marker, group, arrays, signatures, levels)

    def _lay_out(self, levels: Sequence[torch.Tensor], position_dtypes: Sequence[str]) -> None:
        """Create the arrays for feature maps like ``levels`` (under the variant's lock)."""
        import zarr

        self._open_variant()
        if self._levels:
            return
        group = zarr.open_group(str(self.variant), mode="r+")
        n = self.key.num_frames
        meta = []
        for i, (t, pos) in enumerate(zip(levels, position_dtypes)):
            dtype = _dtype_name(t.dtype)
            shape = tuple(int(s) for s in t.shape[1:])
            group.create_array(
                f"level_{i}", shape=(n, *shape), chunks=(1, *shape),
                dtype="uint16" if dtype == "bfloat16" else dtype,
                compressors=self._compressors, fill_value=0, overwrite=True,
            )
            meta.append({
                "dtype": dtype, "positions": pos, "shape": list(shape),
                "strides": [int(x) for x in t.stride()],  # the layout it is given back in
            })
        group.create_array(
            "signature", shape=(n, 2), chunks=(1, 2), dtype="uint64", compressors=(),
            fill_value=0, overwrite=True, config={"write_empty_chunks": False},
        )
        attrs = dict(group.attrs["napari_sam2"])
        attrs["levels"] = meta
        attrs["codec"] = self.codec
        group.attrs["napari_sam2"] = attrs
        self._open_variant()

    def _remove_stale_partials(self) -> None:
        """Temporary chunk files left by a writer that was killed (not by a live one); once
        per store object, before its first write."""
        if self._partials_checked:
            return
        self._partials_checked = True
        now = time.time()
        for partial in self.variant.rglob("*.partial"):
            try:
                if now - partial.stat().st_mtime > _STALE_PARTIAL_S:
                    partial.unlink()
            except OSError:
                pass

    # ------------------------------------------------------------------ frames
    @property
    def levels(self) -> list[dict[str, Any]]:
        """Per stored level: ``{"dtype", "positions" (dtype of its position encoding),
        "shape" (C, H, W), "strides" (of the 1×C×H×W tensor)}``; empty until a first frame
        was written."""
        self._open_variant()
        return [dict(m) for m in self._level_meta]

    def read(
        self, index: int, signature: str, device: torch.device | str = "cpu"
    ) -> list[torch.Tensor] | None:
        """Frame ``index``'s feature maps (``1×C_i×H_i×W_i`` each, on ``device``, in the
        dtypes they were computed in) if they were stored for a frame with this
        ``signature``; ``None`` otherwise (absent, stale, being rewritten, damaged)."""
        self._open_variant()
        if not self._levels:
            return None
        words = signature_words(signature)
        try:
            if not np.array_equal(self._signatures[index], words):
                return None
            arrays = _read_chunks(self._levels, index)
            if not np.array_equal(self._signatures[index], words):  # rewritten meanwhile
                return None
        except Exception as err:  # noqa: BLE001 - a damaged or vanished chunk is a miss
            logger.warning("stored features of frame %d unreadable (%s); recomputing", index, err)
            return None
        dev = torch.device(device)
        out = [_restore(a, m, dev) for a, m in zip(arrays, self._level_meta)]
        self.reads += 1
        self.touch()
        return out

    def has(self, index: int, signature: str) -> bool:
        """Whether frame ``index``'s features are stored for a frame with ``signature``
        (reads the signature only)."""
        self._open_variant()
        if self._signatures is None:
            return False
        try:
            return bool(np.array_equal(self._signatures[index], signature_words(signature)))
        except Exception:  # noqa: BLE001 - unreadable: not stored
            return False

    def write(
        self, index: int, signature: str, levels: Sequence[torch.Tensor],
        position_dtypes: Sequence[str],
    ) -> bool:
        """Store frame ``index``'s feature maps (``1×C_i×H_i×W_i``), valid for frames with
        this ``signature``; ``position_dtypes`` name the dtype of each level's position
        encoding. Returns whether it was written (never raises for a full disk, a read-only
        folder or a store deleted meanwhile: the features just stay in RAM)."""
        if self.read_only or self._write_failed:
            return False
        words = signature_words(signature)
        data = [_to_numpy(t[0]) for t in levels]
        try:
            with self._lock(self.variant):
                if self._variant_meta() is None:  # removed (evicted, cleared) meanwhile
                    self._write_failed = True
                    return False
                self._remove_stale_partials()
                if not self._levels:
                    self._lay_out(levels, position_dtypes)
                if [list(a.shape) for a in data] != [m["shape"] for m in self._level_meta]:
                    raise StoreError(
                        f"frame {index}'s features have shapes {[a.shape for a in data]}, the "
                        f"store holds {[m['shape'] for m in self._level_meta]}"
                    )
                if self._signatures[index].any():
                    self._signatures[index] = 0  # invalid until the new features are in
                for level, a in zip(self._levels, data):
                    level[index] = a
                self._signatures[index] = words
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001 - disk full, permissions, lock timeout
            self._write_failed = True
            warnings.warn(
                f"Could not write embeddings to {self.path} ({type(err).__name__}: {err}); "
                "features of this session are kept in RAM only.",
                RuntimeWarning, stacklevel=2,
            )
            return False
        self.writes += 1
        self.touch()
        return True

    def complete(self) -> np.ndarray:
        """``T`` bool: frames whose features are stored (for some version of the frame; a
        read still checks the frame's signature)."""
        self._open_variant()
        if self._signatures is None:
            return np.zeros(self.key.num_frames, dtype=bool)
        try:
            words = self._signatures[:]
        except Exception:  # noqa: BLE001 - damaged signatures: count nothing
            return np.zeros(self.key.num_frames, dtype=bool)
        return words.any(axis=1)

    def stored_signatures(self) -> np.ndarray:
        """``T×2`` uint64 signature words per frame (0 where absent)."""
        self._open_variant()
        if self._signatures is None:
            return np.zeros((self.key.num_frames, 2), dtype=np.uint64)
        return self._signatures[:]

    def other_keys(self) -> list[tuple[StoreKey, int]]:
        """The other keys' features in this store: ``(key, frames stored)`` each, most frames
        first (e.g. the same stack embedded with another contrast or model)."""
        out = []
        try:
            children = [c for c in self.path.iterdir() if c.is_dir() and c != self.variant]
        except OSError:
            return []
        for child in children:
            try:
                key = StoreKey.from_json(_read_json(child / "zarr.json")["attributes"]
                                         ["napari_sam2"]["key"])
                count = sum(1 for _ in os.scandir(child / "signature" / "c"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if count:
                out.append((key, count))
        return sorted(out, key=lambda item: -item[1])

    # ------------------------------------------------------------------ bookkeeping
    def touch(self, force: bool = False) -> None:
        """Mark the key's features as used now (the cache evicts the least recently used);
        at most once a minute unless ``force``."""
        now = time.time()
        if self.read_only or (not force and now - self._last_touch < _TOUCH_EVERY_S):
            return
        self._last_touch = now
        try:
            os.utime(self.variant / "zarr.json")
        except OSError:
            pass

    def size_bytes(self) -> int:
        """Bytes on disk of the whole store (every key)."""
        return folder_size(self.path)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"EmbeddingStore({self.path}, key {self.key.digest[:8]}, {mode})"


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    total = 0
    stack = [Path(path)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total
