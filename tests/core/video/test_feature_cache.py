"""The bounded LRU cache of per-frame encoder features."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_sam2.core.video.feature_cache import FeatureCache


def test_lru_order_eviction_and_counts() -> None:
    cache = FeatureCache(max_items=3)
    for k in range(3):
        cache.put(k, (torch.full((2,), float(k)),))
    assert len(cache) == 3 and cache.keys() == [0, 1, 2]
    assert cache.get(0)[0][0].item() == 0.0  # 0 is now the most recent
    cache.put(3, "three")  # evicts 1, the least recently used
    assert 1 not in cache and cache.keys() == [2, 0, 3]
    assert cache.get(1) is None
    assert cache.get(2) is not None
    assert (cache.hits, cache.misses) == (2, 1)
    assert 3 in cache and (cache.hits, cache.misses) == (2, 1)  # `in` counts nothing
    cache.put(0, "zero again")  # replacing refreshes without growing
    assert len(cache) == 3 and cache.keys() == [3, 2, 0] and cache.get(0) == "zero again"
    assert cache.pop(3) == "three" and cache.pop(3) is None and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.hits == 3
    cache.reset_stats()
    assert (cache.hits, cache.misses) == (0, 0)


def test_disabled_and_shrinking() -> None:
    off = FeatureCache(max_items=0)
    off.put("a", 1)
    assert len(off) == 0 and off.get("a") is None and off.misses == 1
    cache = FeatureCache()
    assert cache.max_items == 8
    for k in range(8):
        cache.put(k, k)
    cache.get(0)
    cache.max_items = 3
    assert cache.keys() == [6, 7, 0]
    cache.max_items = 0
    assert len(cache) == 0
    for bad in (-1, 2.5, True, None):
        with pytest.raises(ValueError, match="max_items"):
            FeatureCache(max_items=bad)  # type: ignore[arg-type]


def test_thread_safety_smoke() -> None:
    cache = FeatureCache(max_items=16)
    errors: list[BaseException] = []
    n_threads, n_ops = 8, 2000

    def work(seed: int) -> None:
        try:
            for i in range(n_ops):
                key = (seed * 7 + i) % 40
                if i % 3:
                    cache.put(key, (key, seed))
                else:
                    value = cache.get(key)
                    assert value is None or value[0] == key
                assert len(cache) <= 16
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 16
    assert cache.hits + cache.misses == n_threads * len(range(0, n_ops, 3))
