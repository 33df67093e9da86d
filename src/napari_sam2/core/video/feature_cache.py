"""A small, thread-safe LRU cache for per-frame image-encoder features.

SAM 2's video predictor encodes each frame once (the Hiera backbone is by far the most
expensive step) and needs the features again when it propagates back over a frame or adds a
prompt there. Keeping every frame's features would exhaust GPU memory on long stacks, so
:class:`FeatureCache` keeps only the ``max_items`` most recently used ones.

Keys are any hashable (usually the frame index); values are whatever the predictor stores
(e.g. a tuple of tensors). All methods take one lock, so a background pre-encoder may
:meth:`FeatureCache.put` from another thread while the predictor reads.

:meth:`FeatureCache.get_or_compute` is single-flight: while one thread computes a key, other
threads asking for the same key wait for that result instead of computing it again (a click on
a frame the background pre-encoder is encoding waits for it). :meth:`FeatureCache.clear`
makes computations still running *stale*: their results are handed to the thread that
computed them but not stored, and threads waiting on them compute afresh (so features computed
under settings that have just changed never enter the cache).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["FeatureCache"]


def _check_max_items(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"max_items must be a non-negative integer, got {value!r}")
    return int(value)


class _Flight:
    """One computation in progress: waiters block on ``done``; ``ok`` and ``value`` are set
    before it is signalled, ``stale`` by :meth:`FeatureCache.clear`."""

    __slots__ = ("done", "ok", "stale", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.stale = False
        self.value: Any = None


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
        self._flights: dict[Hashable, _Flight] = {}  # keys being computed by get_or_compute
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

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value for ``key``, calling ``compute()`` (without holding the lock) on a miss
        and storing its result.

        Single-flight: if another thread is computing ``key`` now, wait for its result (it
        counts as a hit) rather than computing it twice. If that computation fails or is made
        stale by :meth:`clear`, this thread computes the value itself; an exception from its
        own ``compute()`` propagates to it (and to no one else). With ``max_items=0`` the value
        is returned to the computing thread and its waiters but not kept.
        """
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self._hits += 1
                    return self._items[key]
                flight = self._flights.get(key)
                if flight is None:  # nobody computes it: this thread does
                    mine = self._flights[key] = _Flight()
                    self._misses += 1
                    break
            flight.done.wait()
            with self._lock:
                if flight.ok and not flight.stale:
                    self._hits += 1
                    return flight.value
            # the other computation failed or was invalidated: try again
        try:
            value = compute()
        except BaseException:
            with self._lock:
                if self._flights.get(key) is mine:
                    del self._flights[key]
            mine.done.set()
            raise
        with self._lock:
            if self._flights.get(key) is mine:
                del self._flights[key]
            mine.value, mine.ok = value, True
            if not mine.stale:
                self.put(key, value)
        mine.done.set()
        return value

    def computing(self, key: Hashable) -> bool:
        """Whether a :meth:`get_or_compute` call is computing ``key`` now."""
        with self._lock:
            return key in self._flights

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
        """Drop every entry and make running :meth:`get_or_compute` computations stale (their
        results will not be stored); statistics are kept (see :meth:`reset_stats`)."""
        with self._lock:
            self._items.clear()
            for flight in self._flights.values():
                flight.stale = True
            self._flights.clear()

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
