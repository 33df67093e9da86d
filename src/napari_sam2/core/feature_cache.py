"""A small, thread-safe LRU cache for per-frame image-encoder features.

SAM 2's video predictor encodes each frame once (the Hiera backbone is by far the most
expensive step) and needs the features again when it propagates back over a frame or adds a
prompt there. Keeping every frame's features would exhaust GPU memory on long stacks, so
:class:`FeatureCache` keeps only the ``max_items`` most recently used ones.

Keys are any hashable (usually the frame index); values are whatever the predictor stores
(e.g. a tuple of tensors). All methods take one lock, so a background pre-encoder may
:meth:`FeatureCache.put` from another thread while the predictor reads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

__all__ = ["FeatureCache"]


def _check_max_items(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"max_items must be a non-negative integer, got {value!r}")
    return int(value)


class FeatureCache:
    """Least-recently-used mapping ``key -> value`` holding at most ``max_items`` entries.

    ``max_items=0`` disables caching: :meth:`put` stores nothing and every :meth:`get` misses.
    Values evicted or popped are simply dropped (their tensors are freed once no one else
    holds them).
    """

    def __init__(self, max_items: int = 8) -> None:
        self._max_items = _check_max_items(max_items)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()  # oldest first
        self._lock = threading.RLock()
        self._hits = 0
        self._misses = 0

    # -- configuration / statistics -----------------------------------------------------
    @property
    def max_items(self) -> int:
        """Capacity; setting a smaller value evicts the least recently used entries now."""
        return self._max_items

    @max_items.setter
    def max_items(self, value: int) -> None:
        value = _check_max_items(value)
        with self._lock:
            self._max_items = value
            self._evict()

    @property
    def hits(self) -> int:
        """Number of :meth:`get` calls that found their key."""
        return self._hits

    @property
    def misses(self) -> int:
        """Number of :meth:`get` calls that did not."""
        return self._misses

    def reset_stats(self) -> None:
        """Set :attr:`hits` and :attr:`misses` back to 0 (entries are kept)."""
        with self._lock:
            self._hits = self._misses = 0

    # -- mapping ------------------------------------------------------------------------
    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key`` (now the most recently used), or ``default`` on a miss."""
        with self._lock:
            try:
                value = self._items[key]
            except KeyError:
                self._misses += 1
                return default
            self._items.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` as the most recently used entry, evicting the oldest beyond
        :attr:`max_items`. Replaces an existing value for ``key``."""
        with self._lock:
            if self._max_items == 0:
                self._items.pop(key, None)
                return
            self._items[key] = value
            self._items.move_to_end(key)
            self._evict()

    def pop(self, key: Hashable, default: Any = None) -> Any:
        """Remove ``key`` and return its value (``default`` if absent); no hit/miss counted."""
        with self._lock:
            return self._items.pop(key, default)

    def clear(self) -> None:
        """Drop every entry (statistics are kept; see :meth:`reset_stats`)."""
        with self._lock:
            self._items.clear()

    def keys(self) -> list[Hashable]:
        """A snapshot of the cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached; does not count as a use (no recency, hit or miss)."""
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"FeatureCache({len(self._items)}/{self._max_items} items, "
                f"hits={self._hits}, misses={self._misses})"
            )

    def _evict(self) -> None:
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)
