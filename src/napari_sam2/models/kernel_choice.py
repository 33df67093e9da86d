"""Which attention kernel is fastest on this machine, measured once per process.

Two kinds of attention on a CPU have a choice of kernel: long attention (Hiera's global
blocks, memory attention: thousands of queries and keys) and attention of many queries to a
few keys (the mask decoder's image-to-token attention: thousands of image tokens, a handful
of prompt tokens). Each can run three ways:

``"fused"``
    torch's fused ``scaled_dot_product_attention`` in the inputs' dtype.
``"blocked"``
    :func:`~napari_sam2.models.blocked_attention.chunked_attention`: plain matrix products
    over blocks of query rows, in the inputs' dtype (softmax accumulates in float32 inside
    torch's kernel either way).
``"fused-fp32"``
    bfloat16 inputs attended by the fused kernel in float32 and cast back (only offered for
    bfloat16).
``"few-keys-fp32"``
    :func:`~napari_sam2.models.few_keys_attention.few_keys_attention`: the scores laid out
    keys-first, in float32 (only offered for few keys, where a softmax along rows of a
    handful of values is slow).

Memory attention's values are 64-channel memory tokens projected to 256 channels; the
weighted sum can be taken before or after that projection (see
:mod:`~napari_sam2.models.attention_kernels`). Mixing first does a quarter of the work of
the second product but needs the blocked kernel; projecting first can use the fused one.
:func:`value_order` is measured the same way.

Which is fastest depends on the CPU (its bfloat16 units, caches, oneDNN's kernels) and the
torch build, so nothing is hard-coded: the first attention of each kind and dtype times the
candidates on a small representative problem of that kind (a few tens of milliseconds), and
the fastest is used for the rest of the process. The result is also kept in the machine's
measurement file (:mod:`~napari_sam2.models.precision_policy`) so later processes skip the
timing. Tests inject choices with :func:`set_kernel_choices`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .blocked_attention import chunked_attention
from .few_keys_attention import few_keys_attention

__all__ = [
    "LONG_KEYS",
    "LONG_QUERIES",
    "FEW_KEYS",
    "KERNELS",
    "KINDS",
    "is_long",
    "attention_kind",
    "attention_kernel",
    "long_attention_kernel",
    "VALUE_ORDERS",
    "value_order",
    "time_value_orders",
    "kernel_choices",
    "set_kernel_choices",
    "time_kernels",
]

log = logging.getLogger(__name__)

LONG_KEYS = 1024
"""Keys from which attention counts as long (Hiera's windows have at most 196)."""
LONG_QUERIES = 256
"""Queries from which attention counts as long (the mask decoder's few tokens never do)."""
FEW_KEYS = 64
"""Keys up to which attention of :data:`LONG_QUERIES` or more queries counts as few-keys."""
KERNELS = ("fused", "blocked", "fused-fp32", "few-keys-fp32")
KINDS = ("long", "few-keys")
VALUE_ORDERS = ("mix-first", "project-first")

_lock = threading.Lock()
_choices: dict[str, str] = {}


def is_long(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``B×heads×Nq×d`` queries against ``B×heads×Nk×d`` keys is a long attention."""
    return q.shape[-2] >= LONG_QUERIES and k.shape[-2] >= LONG_KEYS


def attention_kind(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """``"long"``, ``"few-keys"`` or ``None`` (no choice: torch's fused kernel) for
    ``B×heads×Nq×d`` queries against ``B×heads×Nk×d`` keys."""
    if is_long(q, k):
        return "long"
    if q.shape[-2] >= LONG_QUERIES and k.shape[-2] <= FEW_KEYS:
        return "few-keys"
    return None


def _candidates(dtype: torch.dtype, kind: str = "long") -> tuple[str, ...]:
    """Kernels to time. For a few bfloat16 keys the blocked kernel is not offered: its scores
    are rounded to bfloat16 before the softmax, which with so few keys shows in the masks
    (the decoder's image-to-token attention), while the fused kernels keep them in float32.
    For few keys the key-first float32 kernel is offered in either dtype."""
    if kind == "long":
        return KERNELS[:2] if dtype != torch.bfloat16 else KERNELS[:3]
    if dtype != torch.bfloat16:
        return ("fused", "blocked", "few-keys-fp32")
    return ("fused", "fused-fp32", "few-keys-fp32")


def _key(device_type: str, dtype: torch.dtype, kind: str = "long") -> str:
    key = f"{device_type}:{str(dtype).removeprefix('torch.')}"
    return key if kind == "long" else f"{key}:{kind}"


# Representative problems: (heads, queries, keys, channels per head).
_PROBLEMS = {"long": (2, 1024, 4096, 128), "few-keys": (8, 4096, 8, 16)}


def time_kernels(dtype: torch.dtype, repeats: int = 3, kind: str = "long") -> dict[str, float]:
    """Seconds per call of each candidate kernel on a representative problem of ``kind`` in
    ``dtype`` on the CPU (best of ``repeats`` after one warm-up): ``1×2×1024×128`` queries
    by 4096 keys for long attention, ``1×8×4096×16`` by 8 keys for few keys."""
    heads, nq, nk, d = _PROBLEMS[kind]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, nq, d, generator=gen).to(dtype)
    k = torch.randn(1, heads, nk, d, generator=gen).to(dtype)
    v = torch.randn(1, heads, nk, d, generator=gen).to(dtype)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "fused": lambda: F.scaled_dot_product_attention(q, k, v),
        "blocked": lambda: chunked_attention(q, k, v),
        "fused-fp32": lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float()),
        "few-keys-fp32": lambda: few_keys_attention(q, k, v).contiguous(),
    }
    return _best_times(runs, _candidates(dtype, kind), repeats)


def attention_kernel(device_type: str, dtype: torch.dtype, kind: str = "long") -> str:
    """The kernel (one of :data:`KERNELS`) attention of ``kind`` (one of :data:`KINDS`) uses
    on ``device_type`` in ``dtype``.

    On CUDA and other accelerators this is always ``"fused"``. On the CPU it is measured at
    first use (or read from the machine's measurement file) and then kept for the process.
    """
    if device_type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return "fused"
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; one of {KINDS}.")
    key = _key(device_type, dtype, kind)
    with _lock:
        choice = _choices.get(key)
        if choice is None:
            from .precision_policy import machine_record

            record = machine_record()
            times = record.get(f"attention:{key}")
            if not isinstance(times, dict) or set(times) != set(_candidates(dtype, kind)):
                times = time_kernels(dtype, kind=kind)
                record.update({f"attention:{key}": times})
            choice = min(times, key=times.get)
            log.debug("%s attention in %s: %s (%s)", kind, dtype, choice, times)
            _choices[key] = choice
    return choice


def long_attention_kernel(device_type: str, dtype: torch.dtype) -> str:
    """:func:`attention_kernel` for long attention."""
    return attention_kernel(device_type, dtype, "long")


def time_value_orders(dtype: torch.dtype, repeats: int = 3) -> dict[str, float]:
    """Seconds per call of memory-attention cross-attention (``1×1×1024×256`` queries, 4096
    keys, 64-channel value tokens projected to 256) with the weighted sum taken before or
    after the value projection, in ``dtype`` on the CPU (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1024, 256, generator=gen).to(dtype)
    k = torch.randn(1, 1, 4096, 256, generator=gen).to(dtype)
    tokens = torch.randn(1, 1, 4096, 64, generator=gen).to(dtype)
    weight = torch.randn(256, 64, generator=gen).to(dtype)
    bias = torch.randn(256, generator=gen).to(dtype)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "mix-first": lambda: F.linear(chunked_attention(q, k, tokens), weight, bias),
        "project-first": lambda: F.scaled_dot_product_attention(
            q, k, F.linear(tokens, weight, bias)),
    }
    return _best_times(runs, VALUE_ORDERS, repeats)


def value_order(device_type: str, dtype: torch.dtype) -> str:
    """``"mix-first"`` or ``"project-first"`` for memory attention's narrow values on
    ``device_type`` in ``dtype`` (measured on the CPU, as :func:`attention_kernel`;
    ``"project-first"`` elsewhere)."""
    if device_type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return "project-first"
    key = f"values:{_key(device_type, dtype)}"
    with _lock:
        choice = _choices.get(key)
        if choice is None:
            from .precision_policy import machine_record

            record = machine_record()
            times = record.get(key)
            if not isinstance(times, dict) or set(times) != set(VALUE_ORDERS):
                times = time_value_orders(dtype)
                record.update({key: times})
            choice = min(times, key=times.get)
            log.debug("memory-attention values in %s: %s (%s)", dtype, choice, times)
            _choices[key] = choice
    return choice


def _best_times(
    runs: dict[str, Callable[[], torch.Tensor]], names: tuple[str, ...], repeats: int
) -> dict[str, float]:
    times: dict[str, float] = {}
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        for name in names:
            run = runs[name]
            run()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            times[name] = best
    return times


def kernel_choices() -> dict[str, str]:
    """The choices made so far in this process, ``{"cpu:bfloat16": "blocked", ...}``."""
    with _lock:
        return dict(_choices)


def set_kernel_choices(choices: dict[str, str] | None) -> None:
    """Replace the process's choices (``None``: forget them, measure again at next use)."""
    with _lock:
        _choices.clear()
        for key, value in (choices or {}).items():
            allowed = VALUE_ORDERS if key.startswith("values:") else KERNELS
            if value not in allowed:
                raise ValueError(f"unknown attention kernel {value!r}; one of {allowed}.")
            _choices[key] = value
