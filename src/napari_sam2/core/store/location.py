"""Where embedding stores live, and how the cache of them is kept within its budget.

By default a stack's store is ``<root>/<identity digest>.zarr`` with ``<root>`` =
``$NAPARI_SAM2_EMBEDDINGS`` if set, else ``$NAPARI_SAM2_CACHE/embeddings`` (the per-user cache
folder, see :func:`napari_sam2.models.download.cache_dir`). The identity names the data: its
absolute path when it was opened from a file or folder, otherwise its shape, dtype, axes and
first frame's signature; so reopening the same file, or the same array, finds its store.

The default stores share a size budget (``$NAPARI_SAM2_STORE_GB``, default 20 GB): when a store
is opened for writing, the features least recently used are removed until the total fits,
never those used in the last ten minutes (another session may be reading them). Stores at
paths the user chose are never evicted.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .embedding_store import KIND, _read_json, folder_size
from .folders import ROOT_ENV, default_root, lock_for
from .signature import digest

__all__ = [
    "BUDGET_ENV",
    "DEFAULT_BUDGET_GB",
    "ROOT_ENV",
    "StoredFeatures",
    "budget_bytes",
    "clear_stores",
    "default_root",
    "default_store_path",
    "evict",
    "format_bytes",
    "list_stores",
]

BUDGET_ENV = "NAPARI_SAM2_STORE_GB"
DEFAULT_BUDGET_GB = 20.0
IN_USE_S = 600.0  # features used this recently are never evicted


def budget_bytes() -> int:
    """The size budget of the default stores, from ``$NAPARI_SAM2_STORE_GB`` (default 20)."""
    env = os.environ.get(BUDGET_ENV, "").strip()
    try:
        gb = float(env) if env else DEFAULT_BUDGET_GB
    except ValueError:
        raise ValueError(
            f"${BUDGET_ENV} must be a number of gigabytes, got {env!r}"
        ) from None
    if not gb >= 0:
        raise ValueError(f"${BUDGET_ENV} must be >= 0, got {env!r}")
    return int(gb * 1e9)


def format_bytes(n: float) -> str:
    """``n`` bytes for people, in powers of 1000 as disks are sold: ``"2.4 GB"``."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def default_store_path(identity: dict[str, Any]) -> Path:
    """The default store of the data described by ``identity`` (JSON values)."""
    return default_root() / f"{digest(identity)[:24]}.zarr"


@dataclass(frozen=True)
class StoredFeatures:
    """One key's features in one store, as :func:`list_stores` reports them.

    Attributes:
        folder: the key's folder inside the store.
        store: the store folder.
        data: what the store was made for (a path, or an array's description).
        model, config, precision, input: the key's model name, config, precision, input path.
        image_size: the model input size.
        frames: frames in the stack.
        complete: frames whose features are stored.
        size_bytes: bytes on disk of this key's features.
        last_used: POSIX time of the last use.
    """

    folder: Path
    store: Path
    data: str
    model: str
    config: str
    precision: str
    input: str
    image_size: int
    frames: int
    complete: int
    size_bytes: int
    last_used: float


def _count_complete(folder: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(folder / "signature" / "c"))
    except OSError:
        return 0


def _describe(store: Path) -> list[StoredFeatures]:
    try:
        root = _read_json(store / "zarr.json")["attributes"]["napari_sam2"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if root.get("kind") != KIND:
        return []
    data = str(root.get("stack", {}).get("name", "?"))
    out = []
    for child in sorted(store.iterdir()):
        try:
            meta_path = child / "zarr.json"
            meta = _read_json(meta_path)["attributes"]["napari_sam2"]
            key = meta["key"]
            labels = key.get("labels", {})
            out.append(StoredFeatures(
                folder=child, store=store, data=data,
                model=str(labels.get("model", "?")), config=str(labels.get("config", "?")),
                precision=str(key.get("precision", "?")), input=str(key.get("input", "?")),
                image_size=int(key.get("encoder", {}).get("settings", {}).get("image_size", 0)),
                frames=int(key.get("num_frames", 0)), complete=_count_complete(child),
                size_bytes=folder_size(child), last_used=meta_path.stat().st_mtime,
            ))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def list_stores(root: str | os.PathLike | None = None) -> list[StoredFeatures]:
    """Every key's features in the stores under ``root`` (default: :func:`default_root`),
    least recently used first."""
    folder = Path(root) if root is not None else default_root()
    entries: list[StoredFeatures] = []
    if folder.is_dir():
        for store in folder.iterdir():
            if store.is_dir() and store.suffix == ".zarr":
                entries += _describe(store)
    return sorted(entries, key=lambda e: e.last_used)


def _remove(entry: StoredFeatures) -> bool:
    """Remove one key's features (under the store's write lock), and the store when it
    holds nothing else; ``False`` if it could not be removed."""
    try:
        with lock_for(entry.folder).acquire(timeout=0):
            shutil.rmtree(entry.folder)
    except Exception:  # noqa: BLE001 - busy (being written) or not removable
        return False
    try:
        if not any(c.is_dir() for c in entry.store.iterdir()):
            shutil.rmtree(entry.store)
    except OSError:
        pass
    return True


def evict(
    budget: int | None = None, root: str | os.PathLike | None = None,
    keep: tuple[Path, ...] = (),
) -> list[Path]:
    """Remove the least recently used features until the stores under ``root`` fit in
    ``budget`` bytes (default :func:`budget_bytes`); features in ``keep`` or used in the last
    ten minutes stay. Returns the removed folders."""
    budget = budget_bytes() if budget is None else int(budget)
    entries = list_stores(root)
    total = sum(e.size_bytes for e in entries)
    kept = {Path(p).absolute() for p in keep}
    now = time.time()
    removed = []
    for entry in entries:  # least recently used first
        if total <= budget:
            break
        if entry.folder.absolute() in kept or now - entry.last_used < IN_USE_S:
            continue
        if _remove(entry):
            removed.append(entry.folder)
            total -= entry.size_bytes
    return removed


def clear_stores(
    root: str | os.PathLike | None = None, older_than_days: float | None = None
) -> list[Path]:
    """Remove stored features under ``root`` (default :func:`default_root`): all of them, or
    those last used more than ``older_than_days`` days ago. Returns the removed folders."""
    now = time.time()
    removed = []
    for entry in list_stores(root):
        if older_than_days is not None and now - entry.last_used < older_than_days * 86400:
            continue
        if _remove(entry):
            removed.append(entry.folder)
    return removed
