"""Which attention kernel is fastest on this machine, measured once per process.

Long attention (Hiera's global blocks, memory attention: thousands of queries and keys) can
run three ways on a CPU:

``"fused"``
    torch's fused ``scaled_dot_product_attention`` in the inputs' dtype.
``"blocked"``
    :func:`~napari_sam2.models.blocked_attention.chunked_attention`: plain matrix products
    over blocks of query rows, in the inputs' dtype (softmax accumulates in float32 inside
    torch's kernel either way).
``"fused-fp32"``
    bfloat16 inputs attended by the fused kernel in float32 and cast back (only offered for
    bfloat16).

Which is fastest depends on the CPU (its bfloat16 units, caches, oneDNN's kernels) and the
torch build, so nothing is hard-coded: the first long attention of each dtype times the
candidates on a small representative problem (a few tens of milliseconds), and the fastest
is used for the rest of the process. The result is also kept in the machine's measurement
file (:mod:`~napari_sam2.models.precision_policy`) so later processes skip the timing.
Tests inject choices with :func:`set_kernel_choices`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .blocked_attention import chunked_attention

__all__ = [
    "LONG_KEYS",
    "LONG_QUERIES",
    "KERNELS",
    "is_long",
    "long_attention_kernel",
    "kernel_choices",
    "set_kernel_choices",
    "time_kernels",
]

log = logging.getLogger(__name__)

LONG_KEYS = 1024
"""Keys from which attention counts as long (Hiera's windows have at most 196)."""
LONG_QUERIES = 256
"""Queries from which attention counts as long (the mask decoder's few tokens never do)."""
KERNELS = ("fused", "blocked", "fused-fp32")

_lock = threading.Lock()
_choices: dict[str, str] = {}


def is_long(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``B×heads×Nq×d`` queries against ``B×heads×Nk×d`` keys is a long attention."""
    return q.shape[-2] >= LONG_QUERIES and k.shape[-2] >= LONG_KEYS


def _candidates(dtype: torch.dtype) -> tuple[str, ...]:
    return KERNELS if dtype == torch.bfloat16 else KERNELS[:2]


def _key(device_type: str, dtype: torch.dtype) -> str:
    return f"{device_type}:{str(dtype).removeprefix('torch.')}"


def time_kernels(dtype: torch.dtype, repeats: int = 3) -> dict[str, float]:
    """Seconds per call of each candidate kernel on a ``1×2×1024×128`` by ``4096``-key problem
    in ``dtype`` on the CPU (best of ``repeats`` after one warm-up)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1024, 128, generator=gen).to(dtype)
    k = torch.randn(1, 2, 4096, 128, generator=gen).to(dtype)
    v = torch.randn(1, 2, 4096, 128, generator=gen).to(dtype)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "fused": lambda: F.scaled_dot_product_attention(q, k, v),
        "blocked": lambda: chunked_attention(q, k, v),
        "fused-fp32": lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float()),
    }
    times: dict[str, float] = {}
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        for name in _candidates(dtype):
            run = runs[name]
            run()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            times[name] = best
    return times


def long_attention_kernel(device_type: str, dtype: torch.dtype) -> str:
    """The kernel (one of :data:`KERNELS`) long attention uses on ``device_type`` in ``dtype``.

    On CUDA and other accelerators this is always ``"fused"``. On the CPU it is measured at
    first use (or read from the machine's measurement file) and then kept for the process.
    """
    if device_type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return "fused"
    key = _key(device_type, dtype)
    with _lock:
        choice = _choices.get(key)
        if choice is None:
            from .precision_policy import machine_record

            record = machine_record()
            times = record.get(f"attention:{key}")
            if not isinstance(times, dict) or set(times) != set(_candidates(dtype)):
                times = time_kernels(dtype)
                record.update({f"attention:{key}": times})
            choice = min(times, key=times.get)
            log.debug("long attention in %s: %s (%s)", dtype, choice, times)
            _choices[key] = choice
    return choice


def kernel_choices() -> dict[str, str]:
    """The choices made so far in this process, ``{"cpu:bfloat16": "blocked", ...}``."""
    with _lock:
        return dict(_choices)


def set_kernel_choices(choices: dict[str, str] | None) -> None:
    """Replace the process's choices (``None``: forget them, measure again at next use)."""
    with _lock:
        _choices.clear()
        for key, value in (choices or {}).items():
            if value not in KERNELS:
                raise ValueError(f"unknown attention kernel {value!r}; one of {KERNELS}.")
            _choices[key] = value
