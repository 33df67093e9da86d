"""The folder of the default embedding stores, and the writers' locks kept beside them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .signature import digest

__all__ = ["ROOT_ENV", "default_root", "lock_for"]

ROOT_ENV = "NAPARI_SAM2_EMBEDDINGS"
_LOCK_TIMEOUT_S = 60.0


def default_root() -> Path:
    """The folder of the default stores (not created here): ``$NAPARI_SAM2_EMBEDDINGS`` if
    set, else ``$NAPARI_SAM2_CACHE/embeddings``."""
    env = os.environ.get(ROOT_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from ...models.download import cache_dir

    return cache_dir() / "embeddings"


def lock_for(folder: Path) -> Any:
    """The inter-process lock of one store folder (a :class:`filelock.FileLock` in the
    default stores' folder, ``.locks/``, named by the folder's absolute path), so that nothing
    but zarr is ever written into a store."""
    from filelock import FileLock

    locks = default_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = digest(str(Path(folder).absolute()))[:24]
    return FileLock(str(locks / f"{name}.lock"), timeout=_LOCK_TIMEOUT_S)
