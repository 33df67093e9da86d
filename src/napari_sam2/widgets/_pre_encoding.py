"""Opt-in background pre-encoding of the slices around the one the viewer shows.

:class:`PreEncoding` is owned by the :class:`~napari_sam2.widgets._controller.WidgetController`.
While it is enabled and the viewer shows a slice of a session of at least two slices, a
:class:`~napari_sam2.core.video.pre_encoder.PreEncoder` encodes that slice and its neighbours
into the session's feature cache. The controller calls :meth:`PreEncoding.follow` when the
viewer's slice or the session changes and :meth:`PreEncoding.jobs_busy` when jobs start and
end: the encoder is paused while any job runs (the predictor's state is used by one job at a
time) and created only when no job runs. It is closed when the session is dropped, when it is
disabled and when the controller shuts down. Main thread only; no Qt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RADIUS", "PreEncoding"]

RADIUS = 2  # slices encoded on either side of the current one


class PreEncoding:
    """The pre-encoder's lifetime: created, refocused, paused and closed on request.

    Args:
        jobs_busy: returns whether a background job runs or waits.
        radius: slices encoded on either side of the current one.
    """

    def __init__(self, jobs_busy: Callable[[], bool], radius: int = RADIUS) -> None:
        self._jobs_busy = jobs_busy
        self._radius = radius
        self._enabled = False
        self._encoder: Any = None
        self._session: Any = None

    @property
    def enabled(self) -> bool:
        """Whether slices are pre-encoded (default False)."""
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._enabled = bool(on)
        if not self._enabled:
            self.close()

    @property
    def encoder(self) -> Any:
        """The running :class:`~napari_sam2.core.video.pre_encoder.PreEncoder`, or ``None``."""
        return self._encoder

    def follow(self, session: Any, frame_idx: int) -> None:
        """Encode around ``frame_idx`` of ``session``, the session whose slice the viewer shows
        (``None`` if it shows none): creates the encoder for a new session when no job runs,
        closes it when there is nothing to encode."""
        if not self._enabled:
            return
        if session is None or session.num_frames < 2:
            self.close()
            return
        if self._encoder is None or self._session is not session:
            if self._jobs_busy():
                return  # created when the jobs are done (see jobs_busy)
            self.close()
            from ..core.video.pre_encoder import PreEncoder

            self._encoder = PreEncoder(session.predictor, session.state, radius=self._radius)
            self._session = session
        self._encoder.focus(frame_idx)

    def jobs_busy(self, busy: bool) -> None:
        """Pause while a job runs; resume when all are done (the owner then calls
        :meth:`follow` to refocus or create the encoder)."""
        encoder = self._encoder
        if encoder is None:
            return
        if busy:
            encoder.pause()
        else:
            encoder.resume()

    def close(self) -> None:
        """Stop the encoder (waits for the slice it is encoding, if any)."""
        encoder, self._encoder, self._session = self._encoder, None, None
        if encoder is not None:
            encoder.close()
