"""Background jobs of the dock widget, as napari ``thread_worker``s (not started).

Each job is a plain function or generator over the Qt-free pieces (model loading, a
:class:`~napari_sam2.widgets._session.SegmentationSession`, the automatic mask generator); the
workers returned here run it on a thread from Qt's pool, and the widget's main-thread slots
take the yielded / returned values and write layers (conventions 5 and 6: no layer is ever
touched from a worker). Workers are created with ``_start_thread=False``; the widget's
:class:`~napari_sam2.widgets._jobs.JobQueue` starts them one at a time, because the predictor
state is not meant for concurrent use.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
from napari.qt.threading import create_worker

from ._session import FrameMasks, Key, SegmentationSession

__all__ = [
    "CancelHandle",
    "Failure",
    "apply_worker",
    "everything_worker",
    "load_model_worker",
    "precompute_worker",
    "propagate_worker",
]


class Failure(NamedTuple):
    """An exception raised by a job, handed to the main thread as a value (yielded or returned)
    so that the widget reports it once, with context; napari's own error relay and re-raise
    are kept for bugs in the job wrappers themselves."""

    error: BaseException


class CancelHandle:
    """Thread-safe "stop after this frame" flag, plus the job's generator so it can be closed
    on the main thread once the worker has finished (``worker.quit()`` leaves it suspended)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.generator: Iterator[Any] | None = None
        self.stepped_aside = False  # a precompute run stopped to let other work go first

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def close(self) -> None:
        gen, self.generator = self.generator, None
        if gen is not None:
            gen.close()  # runs the session's ``finally``: the predictor generator is closed


def _import_triton_isolated() -> None:
    """Load triton's native library with its own symbols bound first (``RTLD_DEEPBIND``).

    torchvision imports ``torch._dynamo``, which imports triton when it is installed (Linux
    CUDA wheels of torch depend on it). triton's library embeds its own LLVM; when napari
    renders with Mesa's llvmpipe (software OpenGL: virtual machines, remote desktops, Xvfb), Mesa's
    libLLVM is already loaded, triton's LLVM references bind to it and the import crashes the
    process (segmentation fault). Binding the library to its own symbols avoids that; nothing
    changes where triton is absent or already imported.
    """
    if sys.platform != "linux" or "triton" in sys.modules or not hasattr(os, "RTLD_DEEPBIND"):
        return
    if importlib.util.find_spec("triton") is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import triton._C.libtriton  # noqa: F401
    except Exception:  # noqa: BLE001 - torch copes without triton
        pass
    finally:
        sys.setdlopenflags(flags)


def preload() -> None:
    """Import torch, torchvision and the model code on the main thread, before any worker.

    Importing torch's deeper modules for the first time inside a Qt pool thread is not safe
    (small thread stacks; native libraries loaded off the main thread), and triton needs the
    care described in :func:`_import_triton_isolated`.
    """
    _import_triton_isolated()
    import hydra.utils  # noqa: F401
    import torchvision.ops  # noqa: F401

    from ..core.image import mask_generator  # noqa: F401
    from ..core.video import predictor  # noqa: F401
    from ..models import build, checkpoints  # noqa: F401


def _load_model(name_or_path: str, config: str | None, device: str, image_size: int | None) -> Any:
    from ..models.checkpoints import load_model

    try:
        return load_model(
            name_or_path, config=config, device=device, image_size=image_size, video=True
        )
    except Exception as err:  # noqa: BLE001 - reported by the widget
        return Failure(err)


def load_model_worker(
    name_or_path: str, config: str | None = None, device: str | None = "auto",
    image_size: int | None = None,
) -> Any:
    """Worker returning the loaded network (video settings on; it also serves images)."""
    preload()
    return create_worker(
        _load_model, name_or_path, config, device, image_size, _start_thread=False,
        _ignore_errors=True,
    )


def _apply(session: SegmentationSession, changes: Mapping[Key, Any]) -> Iterator[Any]:
    try:
        yield from session.apply(changes)
    except Exception as err:  # noqa: BLE001 - reported by the widget
        yield Failure(err)


def apply_worker(session: SegmentationSession, changes: Mapping[Key, Any]) -> Any:
    """Worker yielding ``(frame_idx, {obj_id: mask})`` for each changed prompt (encodes the
    frame first if its features are not cached)."""
    return create_worker(_apply, session, dict(changes), _start_thread=False, _ignore_errors=True)


def _drive(handle: CancelHandle, gen: Iterator[Any]) -> Iterator[Any]:
    """Yield what ``gen`` yields until it ends or ``handle`` is cancelled, then close it;
    an exception is yielded as a :class:`Failure`. ``handle.generator`` names ``gen`` while
    it runs, so that the main thread can close it if the worker is left suspended."""
    try:
        handle.generator = gen
        for item in gen:
            yield item
            if handle.cancelled:
                break
        gen.close()
    except Exception as err:  # noqa: BLE001 - reported by the widget
        yield Failure(err)
    handle.generator = None


def _propagate(
    session: SegmentationSession, direction: str, frame_range: tuple[int, int] | None,
    handle: CancelHandle,
) -> Iterator[FrameMasks]:
    try:
        gen = session.propagate(direction, frame_range, should_stop=lambda: handle.cancelled)
    except Exception as err:  # noqa: BLE001 - reported by the widget
        yield Failure(err)
        return
    yield from _drive(handle, gen)


def propagate_worker(
    session: SegmentationSession, direction: str, frame_range: tuple[int, int] | None,
    handle: CancelHandle,
) -> Any:
    """Worker yielding ``(frame_idx, {obj_id: mask})`` per tracked frame; stops within one
    frame of ``handle.cancel()``."""
    return create_worker(
        _propagate, session, direction, frame_range, handle, _start_thread=False,
        _ignore_errors=True,
    )


def _precompute(
    session: SegmentationSession, handle: CancelHandle, step_aside: Callable[[], bool]
) -> Iterator[Any]:
    def stop() -> bool:
        if handle.cancelled:
            return True
        if step_aside():
            handle.stepped_aside = True
            return True
        return False

    try:
        gen = session.precompute(should_stop=stop)
    except Exception as err:  # noqa: BLE001 - reported by the widget
        yield Failure(err)
        return
    yield from _drive(handle, gen)


def precompute_worker(
    session: SegmentationSession, handle: CancelHandle,
    step_aside: Callable[[], bool] = lambda: False,
) -> Any:
    """Worker yielding ``(frame_idx, encoded)`` per frame while it fills the session's
    embedding store; stops within one frame of ``handle.cancel()``, or when ``step_aside()``
    is true (then ``handle.stepped_aside`` is set)."""
    return create_worker(
        _precompute, session, handle, step_aside, _start_thread=False, _ignore_errors=True
    )


def _everything(model: Any, frame: np.ndarray, options: Mapping[str, Any]) -> np.ndarray:
    from ..core.annotations.labels import masks_to_labels
    from ..core.image.mask_generator import SAM2AutomaticMaskGenerator

    try:
        generator = SAM2AutomaticMaskGenerator(model, **dict(options))
        records = generator.generate(frame)
        return masks_to_labels(records, frame.shape[:2])
    except Exception as err:  # noqa: BLE001 - reported by the widget
        return Failure(err)


def everything_worker(model: Any, frame: np.ndarray, options: Mapping[str, Any]) -> Any:
    """Worker returning ``H×W`` labels ``1..N`` of every object found in ``frame``
    (largest first, see :func:`~napari_sam2.core.annotations.labels.masks_to_labels`)."""
    return create_worker(
        _everything, model, frame, dict(options), _start_thread=False, _ignore_errors=True
    )
