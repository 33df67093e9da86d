"""Split-float32 products: float32 matrix products computed on bfloat16 units.

oneDNN can split each float32 operand into bfloat16 parts and multiply those on the CPU's
bfloat16 units (AVX-512 BF16, AMX), keeping close to float32 accuracy. Whether this CPU and
torch build do so accurately is checked once per process against float64
(:func:`fast_fp32_available`); :class:`precision_scope` turns the process-wide switch on
while any caller needs it. The ``"fast"`` precision mode is built on this.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

__all__ = ["FAST_TOLERANCE", "fast_fp32_available", "precision_scope"]

log = logging.getLogger(__name__)

FAST_TOLERANCE = 1e-5
"""Largest relative error (against float64) a split product may have to count as float32."""

_lock = threading.Lock()
_active = 0
_saved: str | None = None
_fast_ok: bool | None = None


def _matmul_flags() -> Any:
    return getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)


def fast_fp32_available() -> bool:
    """Whether float32 products may use bfloat16 units here without losing float32-level
    accuracy (checked once: relative error ≤ :data:`FAST_TOLERANCE` against float64)."""
    global _fast_ok
    if _fast_ok is None:
        flags = _matmul_flags()
        if (
            flags is None
            or not hasattr(flags, "fp32_precision")
            or not torch.backends.mkldnn.is_available()
        ):
            _fast_ok = False
        else:
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(256, 512, generator=gen)
            b = torch.randn(512, 256, generator=gen)
            exact = a.double() @ b.double()
            previous = flags.fp32_precision
            try:
                flags.fp32_precision = "bf16"
                fast = a @ b
            except (RuntimeError, ValueError):  # not supported by this build
                fast = None
            finally:
                flags.fp32_precision = previous
            if fast is None:
                _fast_ok = False
            else:
                err = float((fast.double() - exact).abs().max() / exact.abs().max())
                _fast_ok = err <= FAST_TOLERANCE
                log.debug("fast float32 products: relative error %.2e -> %s", err, _fast_ok)
    return _fast_ok


class precision_scope:
    """Context manager: float32 products may use bfloat16 units (``"fast"``) while inside.

    Re-entrant and thread-safe: the process-wide switch is set by the first scope to open and
    restored by the last to close. Outside CPUs that pass :func:`fast_fp32_available`, it
    does nothing.
    """

    def __enter__(self) -> precision_scope:
        global _active, _saved
        if fast_fp32_available():
            with _lock:
                if _active == 0:
                    flags = _matmul_flags()
                    _saved = flags.fp32_precision
                    flags.fp32_precision = "bf16"
                _active += 1
            self._entered = True
        else:
            self._entered = False
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        if self._entered:
            with _lock:
                _active -= 1
                if _active == 0:
                    _matmul_flags().fp32_precision = _saved
            self._entered = False
