"""The dock widget's opt-in background pre-encoding of the slices around the current one.

:class:`PreEncodingMixin` is mixed into :class:`~napari_sam2.widgets._widget.SAM2Widget` next
to :class:`~napari_sam2.widgets._controller.WidgetController`, whose state it uses. With
:attr:`~PreEncodingMixin.pre_encode` on and a session of at least two slices, a
:class:`~napari_sam2.core.video.pre_encoder.PreEncoder` encodes the current slice and its
neighbours into the session's feature cache while the user looks at the stack. It follows the
viewer's current slice and the end of every job; it is paused while any job runs (the
predictor's state is otherwise used by one job at a time), and closed when the session is
dropped, when the option is turned off and when the widget shuts down. Everything here runs on
the main thread.
"""

from __future__ import annotations

from typing import Any

from ._layers import StackGeometry

__all__ = ["PreEncodingMixin"]

RADIUS = 2  # slices encoded on either side of the current one


class PreEncodingMixin:
    """``pre_encode`` (scripting property and checkbox) and the pre-encoder's lifetime."""

    _pre_encode_on = False
    _pre_encoder: Any = None
    _pre_encoded_session: Any = None

    @property
    def pre_encode(self) -> bool:
        """Encode the slices next to the current one in the background (default False)."""
        return self._pre_encode_on

    @pre_encode.setter
    def pre_encode(self, on: bool) -> None:
        self._pre_encode_on = bool(on)
        box = self._ui.pre_encode
        if box.isChecked() != self._pre_encode_on:
            box.setChecked(self._pre_encode_on)
        if self._pre_encode_on:
            self._refresh_pre_encoder()
        else:
            self._close_pre_encoder()

    @property
    def pre_encoder(self) -> Any:
        """The running :class:`~napari_sam2.core.video.pre_encoder.PreEncoder`, or ``None``."""
        return self._pre_encoder

    # ------------------------------------------------------------------ driving it
    def _refresh_pre_encoder(self, event: Any = None) -> None:
        """Focus the pre-encoder on the current slice, creating it for the current session
        when the option is on (not while a job runs: the session's state may be in use)."""
        if not self._pre_encode_on or not getattr(self, "_alive", False):
            return
        session = self._session
        if session is None or session.num_frames < 2 or not self._viewing(session):
            self._close_pre_encoder()
            return
        if self._pre_encoder is None or self._pre_encoded_session is not session:
            if self._jobs.busy:
                return  # created when the jobs are done (see _pause_pre_encoder)
            self._close_pre_encoder()
            from ..core.video.pre_encoder import PreEncoder

            self._pre_encoder = PreEncoder(session.predictor, session.state, radius=RADIUS)
            self._pre_encoded_session = session
            if self._jobs.busy:
                self._pre_encoder.pause()
        self._pre_encoder.focus(self.current_frame())

    def _viewing(self, session: Any) -> bool:
        """Whether the viewer shows a slice of ``session``'s stack (for 4D data: the other
        axes are where the session was opened)."""
        if session is not self._session or self._image is None:
            return False
        now = StackGeometry.of(self._image, self._frame_axis, self._current_indices())
        return now == self._geometry

    def _pause_pre_encoder(self, busy: bool) -> None:
        """Give the CPU to a job while one runs; refocus when all are done."""
        pre = self._pre_encoder
        if busy:
            if pre is not None:
                pre.pause()
            return
        if pre is not None:
            pre.resume()
        self._refresh_pre_encoder()

    def _close_pre_encoder(self) -> None:
        """Stop the pre-encoder (waits for the slice it is encoding, if any)."""
        pre, self._pre_encoder, self._pre_encoded_session = self._pre_encoder, None, None
        if pre is not None:
            pre.close()
