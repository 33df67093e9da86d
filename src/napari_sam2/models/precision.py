"""How the heavy parts of a SAM 2 network compute: strict float32, fast float32, or bfloat16.

Three modes, set per model with :func:`set_precision` (``model.precision`` tells the current one,
``model.precision_reason`` why), plus ``"auto"`` (the default everywhere), which picks one of
them for the model's device by measurement (:mod:`~napari_sam2.models.precision_policy`):
bfloat16 on CUDA and on CPUs with bfloat16 product units, float32 elsewhere.

``"fp32"``
    Strict IEEE float32 everywhere; the reference behaviour.
``"fast"``
    Inputs and outputs stay float32, but on CPUs whose oneDNN library can split float32 into
    bfloat16 parts (AVX-512 BF16 or AMX), matrix products and attention use those units, which
    can be faster (1.4x on one Zen 5; ``auto`` measures it). Before it is used, a product is
    checked against float64 once per process; if the relative error is above
    :data:`FAST_TOLERANCE` (a CPU that would round to plain bfloat16), ``"fast"`` falls back to
    strict float32. So ``"fast"`` is never less exact than that bound, and results stay within
    the parity tolerance of the reference.
``"bf16"``
    The image encoder, memory attention, memory encoder and mask decoder run under bfloat16
    autocast (CPU or CUDA), SAM 2's own regime, and their outputs are cast back to float32.
    Their linear and convolution weights are cast to bfloat16 once (kept beside the float32
    ones, remade when those change) instead of on every call. About 1 % relative error in the
    features; masks agree with float32 to within a few edge pixels (see the bfloat16
    agreement tests).

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

from .fast_fp32 import FAST_TOLERANCE, fast_fp32_available, precision_scope

__all__ = [
    "PRECISIONS",
    "MODES",
    "FAST_TOLERANCE",
    "fast_fp32_available",
    "set_precision",
    "precision_scope",
]

# FAST_TOLERANCE, fast_fp32_available and precision_scope live in .fast_fp32 and are
# re-exported here, where the modes are described.

log = logging.getLogger(__name__)

MODES = ("fp32", "fast", "bf16")
"""The modes a model actually runs in."""
PRECISIONS = ("auto", *MODES)
"""What may be asked for: a mode or ``"auto"``."""
_PARTS = ("image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder")
_AUTOCAST_PARTS = _PARTS  # every heavy part, as SAM 2 runs under autocast

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


class _WeightShadows:
    """bfloat16 copies of a part's linear and convolution weights, swapped in while the part
    runs without gradients (autocast then finds them already cast) and swapped back after.

    Re-entrant and thread-safe: the first call to enter swaps, the last to leave restores.
    A copy is remade when its float32 weight changed (a new tensor or an in-place write).
    """

    _TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)

    def __init__(self, part: nn.Module) -> None:
        self._slots = [
            (module, name)
            for module in part.modules()
            if isinstance(module, self._TYPES)
            for name in ("weight", "bias")
            if isinstance(module._parameters.get(name), torch.Tensor)
        ]
        self._copies: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        self._saved: list[Any] = []
        self._users = 0
        self._lock = threading.Lock()

    def _fresh_copies(self) -> list[torch.Tensor]:
        current = [module._parameters[name] for module, name in self._slots]
        valid = len(self._copies) == len(current) and all(
            src is p and version == p._version
            for (src, version, _), p in zip(self._copies, current)
        )
        if not valid:
            with torch.no_grad():
                self._copies = [
                    (p, p._version, p.detach().to(torch.bfloat16)) for p in current
                ]
        return [copy for _, _, copy in self._copies]

    def enter(self) -> bool:
        """Swap the copies in (first user) and count this user; ``False`` (nothing done)
        for weights made under inference mode, which keep no version to tell a change by,
        so autocast casts them on every call instead."""
        with self._lock:
            if self._users == 0:
                if any(module._parameters[name].is_inference() for module, name in self._slots):
                    return False
                copies = self._fresh_copies()
                self._saved = [module._parameters[name] for module, name in self._slots]
                for (module, name), copy in zip(self._slots, copies):
                    module._parameters[name] = copy  # a plain tensor: read-only use
            self._users += 1
            return True

    def leave(self) -> None:
        """Count this user out; the last one puts the float32 weights back."""
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for (module, name), original in zip(self._slots, self._saved):
                    module._parameters[name] = original
                self._saved = []


class _Swap:
    """Context manager over :class:`_WeightShadows` (used without gradients only)."""

    def __init__(self, shadows: _WeightShadows) -> None:
        self.shadows = shadows
        self.active = False

    def __enter__(self) -> _Swap:
        self.active = self.shadows.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.shadows.leave()
            self.active = False


def _hooks(mode: str, autocast: bool, part: nn.Module) -> tuple[Callable, Callable]:
    """A forward pre-hook that opens this mode's contexts and a forward hook that closes them
    (always called, also when the forward raises) and casts bfloat16 outputs to float32."""
    local = threading.local()  # contexts opened per call, per thread
    shadows = _WeightShadows(part) if mode == "bf16" and autocast else None

    def pre(module: nn.Module, args: Any) -> None:
        contexts: list[Any] = []
        contexts.append(precision_scope())  # float32 parts of "bf16" benefit as well
        if mode == "bf16" and autocast:
            contexts.append(torch.autocast(_device_type(module), dtype=torch.bfloat16))
            if shadows is not None and not torch.is_grad_enabled():
                contexts.append(_Swap(shadows))
        for ctx in contexts:
            ctx.__enter__()
        local.__dict__.setdefault("stack", []).append(contexts)

    def post(module: nn.Module, args: Any, output: Any) -> Any:
        stack = local.__dict__.get("stack")
        for ctx in reversed(stack.pop() if stack else []):
            ctx.__exit__(None, None, None)
        return _to_float32(output) if mode == "bf16" else output

    return pre, post


def set_precision(model: nn.Module, mode: str = "auto") -> nn.Module:
    """Make ``model`` (a SAM 2 network) compute in ``mode`` (one of :data:`PRECISIONS`).

    ``"auto"`` is resolved for the device of the model's weights
    (:func:`~napari_sam2.models.precision_policy.resolve_precision`). Applies to the image
    encoder, memory attention, memory encoder and mask decoder (the parts that exist).
    Returns ``model``; ``model.precision`` records the mode it runs in and
    ``model.precision_reason`` why.
    """
    if mode not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {mode!r}.")
    from .precision_policy import resolve_precision

    param = next(model.parameters(), None)
    choice = resolve_precision(mode, "cpu" if param is None else param.device)
    for handle in getattr(model, "_precision_hooks", ()):
        handle.remove()
    handles = []
    if choice.mode != "fp32":
        for name in _PARTS:
            part = getattr(model, name, None)
            if part is None:
                continue
            pre, post = _hooks(choice.mode, autocast=name in _AUTOCAST_PARTS, part=part)
            handles.append(part.register_forward_pre_hook(pre))
            handles.append(part.register_forward_hook(post, always_call=True))
    model._precision_hooks = handles
    model.precision = choice.mode
    model.precision_reason = choice.reason
    return model
