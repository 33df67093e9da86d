"""How the heavy parts of a SAM 2 network compute: strict float32, fast float32, or bfloat16.

Three modes, set per model with :func:`set_precision` (``model.precision`` tells the current one):

``"fp32"``
    Strict IEEE float32 everywhere; the reference behaviour.
``"fast"`` (the default)
    Inputs and outputs stay float32, but on CPUs whose oneDNN library can split float32 into
    bfloat16 parts (AVX-512 BF16 or AMX), matrix products and attention use those units. On
    such CPUs this is about twice as fast. Before it is used, a product is checked against float64
    once per process; if the relative error is above :data:`FAST_TOLERANCE` (a CPU that would
    round to plain bfloat16), ``"fast"`` falls back to strict float32. So ``"fast"`` is never
    less exact than that bound, and results stay within the parity tolerance of the reference.
``"bf16"``
    Opt-in: the image encoder, memory attention and memory encoder run under bfloat16 autocast
    (CPU or CUDA) and their outputs are cast back to float32. About 1 % relative error in the
    features; masks agree with float32 to within a few edge pixels. Checked by its own, looser
    parity test.

The modes are applied with forward hooks on the network's top-level parts, so every caller
(image predictor, video predictor, background pre-encoder) gets them without extra code. The
float32-precision switch of torch is process-wide; it is turned on while any of our modules
runs in ``"fast"`` mode and put back when the last one finishes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "FAST_TOLERANCE",
    "fast_fp32_available",
    "set_precision",
    "precision_scope",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fast", "bf16")
FAST_TOLERANCE = 1e-5
_PARTS = ("image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder")
_AUTOCAST_PARTS = ("image_encoder", "memory_attention", "memory_encoder")

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


def _to_float32(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype == torch.bfloat16 else x
    if isinstance(x, dict):
        return {k: _to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    return x


def _device_type(module: nn.Module) -> str:
    param = next(module.parameters(), None)
    return "cpu" if param is None else param.device.type


def _hooks(mode: str, autocast: bool) -> tuple[Callable, Callable]:
    """A forward pre-hook that opens this mode's contexts and a forward hook that closes them
    (always called, also when the forward raises) and casts bfloat16 outputs to float32."""
    local = threading.local()  # contexts opened per call, per thread

    def pre(module: nn.Module, args: Any) -> None:
        contexts: list[Any] = []
        contexts.append(precision_scope())  # float32 parts of "bf16" benefit as well
        if mode == "bf16" and autocast:
            contexts.append(torch.autocast(_device_type(module), dtype=torch.bfloat16))
        for ctx in contexts:
            ctx.__enter__()
        local.__dict__.setdefault("stack", []).append(contexts)

    def post(module: nn.Module, args: Any, output: Any) -> Any:
        stack = local.__dict__.get("stack")
        for ctx in reversed(stack.pop() if stack else []):
            ctx.__exit__(None, None, None)
        return _to_float32(output) if mode == "bf16" else output

    return pre, post


def set_precision(model: nn.Module, mode: str = "fast") -> nn.Module:
    """Make ``model`` (a SAM 2 network) compute in ``mode`` (one of :data:`PRECISIONS`).

    Applies to the image encoder, memory attention, memory encoder and mask decoder (the parts
    that exist). Returns ``model``; ``model.precision`` records the mode.
    """
    if mode not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {mode!r}.")
    for handle in getattr(model, "_precision_hooks", ()):
        handle.remove()
    handles = []
    if mode != "fp32":
        for name in _PARTS:
            part = getattr(model, name, None)
            if part is None:
                continue
            pre, post = _hooks(mode, autocast=name in _AUTOCAST_PARTS)
            handles.append(part.register_forward_pre_hook(pre))
            handles.append(part.register_forward_hook(post, always_call=True))
    model._precision_hooks = handles
    model.precision = mode
    return model
