"""Follow objects through a time-lapse or z-stack with SAM 2, and correct them anywhere.

:class:`SAM2VideoPredictor` has the API of SAM 2's ``SAM2VideoPredictor``
(``sam2.sam2_video_predictor``): ``init_state``, ``add_new_points_or_box``, ``add_new_mask``,
``propagate_in_video``, ``clear_all_prompts_in_frame``, ``remove_object``, ``reset_state``,
with the same arguments and return shapes, and gives the same numbers. Differences:

* ``init_state`` takes anything :func:`~napari_sam2.core.stacks.source.open_frames` accepts
  (numpy / dask / zarr arrays, a napari layer's data, a TIFF stack or image folder, a
  :class:`~napari_sam2.core.stacks.source.FrameSource`); frames are read, normalised and
  encoded only when needed, and the features of the last ``feature_cache_size`` frames are
  cached (nothing is encoded by ``init_state`` itself);
* per-frame results live in a :class:`~napari_sam2.core.video.results.ResultStore`: bounded RAM
  whatever the stack length, the rest spilled to a temporary directory that is deleted by
  ``reset_state`` / ``state.close()`` (or when the state is collected);
* image features are kept in an embedding store on disk behind the RAM cache (``store=``;
  by default in the user cache, see :mod:`napari_sam2.core.store`), so a stack encoded once
  is not encoded again in a later session;
* the state is a typed :class:`~napari_sam2.core.video.state.VideoInferenceState`;
* :meth:`SAM2VideoPredictor.propagate` follows forward, backward or both ways within a range;
* bad input raises ``ValueError`` / ``IndexError`` / ``KeyError`` naming the argument, before
  anything is changed; ``clear_all_prompts_in_frame`` with an unknown ``obj_id`` raises
  (SAM 2 silently creates a prompt-less object that later breaks propagation);
* a new click or mask on a frame that is already a conditioning (prompted) frame of the object
  keeps it a conditioning frame, so the correction is used by the next propagation (SAM 2
  stores it as a tracked frame after a propagation, and then drops it);
* after a click, the returned masks show every object's latest result on that frame;
* a mask prompt must have the frame's ``H×W`` (SAM 2 resizes any 2D array);
* hole filling (``fill_hole_area``) runs on any device (SAM 2 skips it without its CUDA
  extension); ``clear_non_cond_mem_around_input`` clears the prompted object's memory (in
  ``sam2==1.1.0`` that option fails with an ``AttributeError``);
* the predictor applies SAM 2's video settings (binarised memories of prompted frames, hole
  filling) to any network, also one loaded for images, without changing it (SAM 2 reads them
  from the network, and one built for images silently tracks with other memories);
* ``propagate_in_video`` checks its arguments when called (errors surface at the call, not at
  the first iteration); the memory encoding of new prompts still happens on the first step.

A state is not meant to be used from several threads at once: run one call (or one
propagation) at a time, e.g. stop iterating a propagation before adding prompts. The one
exception is :meth:`encode_frame`, which a background
:class:`~napari_sam2.core.video.pre_encoder.PreEncoder` may call while the user's thread works.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..stacks.source import open_frames
from ..store.stack_store import StoreSpec, check_store_spec, open_stack_store
from .engine import Output, TrackingEngine
from .frame_encoder import FrameEncoder
from .prompts import (
    check_frame_idx,
    check_obj_id,
    concat_points,
    mask_inputs_from,
    point_inputs_from,
)
from .propagation import passes_of_propagate, passes_of_propagate_in_video
from .results import ResultStore
from .state import NOT_TRACKED, REVERSE, ObjectState, TempOutput, VideoInferenceState

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base

__all__ = ["SAM2VideoPredictor", "UnknownObjectError", "VideoInferenceState"]

#: SAM 2's video predictor's hole filling, applied whatever settings the network was built with.
VIDEO_FILL_HOLE_AREA = 8
_PREDICTOR_STORE = object()  # init_state's default: the predictor's own store setting


class UnknownObjectError(KeyError, RuntimeError):
    """An ``obj_id`` that the state does not know (a ``KeyError``; also a ``RuntimeError``, the
    type SAM 2 raises from ``remove_object(..., strict=True)``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SAM2VideoPredictor:
    """Track objects through a stack with SAM 2, one frame at a time.

    A facade with SAM 2's public API over objects with one job each: a
    :class:`~napari_sam2.core.video.frame_encoder.FrameEncoder` (frames -> cached image
    features), a :class:`~napari_sam2.core.video.engine.TrackingEngine` (one frame for all
    objects) and, per stack, a :class:`~napari_sam2.core.video.state.VideoInferenceState`
    holding the objects' prompts and a results store; the frames a propagation visits are
    planned in :mod:`napari_sam2.core.video.propagation`.

    Args:
        model: a SAM 2 network (:func:`napari_sam2.models.checkpoints.load_model` with
            ``video=True``), in eval mode.
        fill_hole_area: fill background holes of at most this many low-res pixels in every
            mask (default 8, SAM 2's video setting, also for a network loaded without
            ``video=True``; 0 disables). The predictor owns its video settings: it also
            encodes a prompted frame's memory from its binarised mask, as SAM 2's video
            predictor does, and never changes the network it is given.
        non_overlap_masks: give each pixel of the returned masks to one object at most.
        clear_non_cond_mem_around_input: after a prompt, forget that object's tracked results
            within ``num_maskmem`` frames of it.
        add_all_frames_to_correct_as_cond: corrected frames become conditioning frames.
        feature_cache_size: frames whose image features are kept (on the model's device);
            by default as many as fit in ``feature_cache_mib`` (at least 4): 32 frames of
            the tiny model at 1024 px, 128 at 512 px. A re-propagation over cached frames
            does not run the image encoder again.
        feature_cache_mib: the memory budget of the default feature cache, in MiB.
        ram_window: tracked (non-conditioning) results kept in RAM per object; default: the
            number of past frames the model reads, plus one.
        spill_dir: where the temporary directory of spilled results is created (default:
            the system's temporary directory).
        store: where each stack's image features are kept on disk: ``None`` (default) in the
            user cache (``$NAPARI_SAM2_CACHE/embeddings``, a 20 GB budget), ``False`` nowhere,
            a path for that one store (then use this predictor for one stack, or pass
            ``store=`` to :meth:`init_state` per stack).
    """

    def __init__(
        self,
        model: SAM2Base,
        *,
        fill_hole_area: int | None = None,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        feature_cache_size: int | None = None,
        feature_cache_mib: float = 512,
        ram_window: int | None = None,
        spill_dir: str | os.PathLike | None = None,
        store: StoreSpec = None,
    ) -> None:
        if not hasattr(model, "track_step"):
            raise TypeError(
                f"model must be a SAM 2 network (SAM2Base), got {type(model).__name__}."
            )
        self.model = model
        area = VIDEO_FILL_HOLE_AREA if fill_hole_area is None else fill_hole_area
        if isinstance(area, bool) or not isinstance(area, int) or area < 0:
            raise ValueError(f"fill_hole_area must be an integer >= 0, got {area!r}.")
        self.encoder = FrameEncoder(model, feature_cache_size, feature_cache_mib)
        self.engine = TrackingEngine(
            model, self.encoder, fill_hole_area=area, non_overlap_masks=bool(non_overlap_masks),
            clear_non_cond_mem_around_input=bool(clear_non_cond_mem_around_input),
        )
        self.add_all_frames_to_correct_as_cond = bool(add_all_frames_to_correct_as_cond)
        if ram_window is None:
            ram_window = 1 + max(
                model.num_maskmem * model.memory_temporal_stride_for_eval,
                model.max_obj_ptrs_in_encoder if model.use_obj_ptrs_in_encoder else 0,
            )
        self.ram_window = ram_window
        self.spill_dir = spill_dir
        check_store_spec(store)
        self.store = store
        ResultStore(1, ram_window)  # validates ram_window

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: str | os.PathLike | None = None,
        device: str | torch.device | None = "auto",
        image_size: int | None = None,
        progress: bool = True,
        precision: str = "auto",
        **kwargs: Any,
    ) -> SAM2VideoPredictor:
        """Load a model (official name such as ``"sam2.1_hiera_tiny"``, Hugging Face id
        ``"facebook/sam2.1-hiera-tiny"``, or a checkpoint file) with the video settings and wrap
        it; ``precision`` as in :func:`~napari_sam2.models.checkpoints.load_model`; ``kwargs``
        go to the constructor."""
        from ...models.checkpoints import load_model

        model = load_model(
            name_or_path, config=config, device=device, image_size=image_size, video=True,
            progress=progress, precision=precision,
        )
        return cls(model, **kwargs)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # SAM 2's settings, read by the objects that use them
    @property
    def fill_hole_area(self) -> int:
        """Fill background holes of at most this many low-res pixels in every mask."""
        return self.engine.fill_hole_area

    @fill_hole_area.setter
    def fill_hole_area(self, value: int) -> None:
        self.engine.fill_hole_area = value

    @property
    def non_overlap_masks(self) -> bool:
        """Give each pixel of the returned masks to one object at most."""
        return self.engine.non_overlap_masks

    @non_overlap_masks.setter
    def non_overlap_masks(self, value: bool) -> None:
        self.engine.non_overlap_masks = bool(value)

    @property
    def clear_non_cond_mem_around_input(self) -> bool:
        """After a prompt, forget that object's tracked results near it."""
        return self.engine.clear_non_cond_mem_around_input

    @clear_non_cond_mem_around_input.setter
    def clear_non_cond_mem_around_input(self, value: bool) -> None:
        self.engine.clear_non_cond_mem_around_input = bool(value)

    @property
    def feature_cache_size(self) -> int | None:
        """Fixed capacity of each new state's feature cache (``None``: sized by memory)."""
        return self.encoder.feature_cache_size

    @property
    def feature_cache_mib(self) -> float:
        """Memory budget of the feature cache when its size is not fixed, in MiB."""
        return self.encoder.feature_cache_mib

    # ------------------------------------------------------------------ state
    def init_state(
        self,
        video_path_or_frames: Any = None,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
        *,
        video_path: Any = None,
        store: StoreSpec = _PREDICTOR_STORE,
        **frame_kwargs: Any,
    ) -> VideoInferenceState:
        """Open a stack for tracking.

        Args:
            video_path_or_frames: anything :func:`~napari_sam2.core.stacks.source.open_frames`
                accepts (``video_path=`` is accepted as SAM 2 spells it).
            offload_video_to_cpu, async_loading_frames: accepted for compatibility; frames are
                always read lazily, one at a time.
            offload_state_to_cpu: keep results in CPU RAM rather than on the model's device.
            store: this stack's embedding store (``None`` the default location, ``False``
                none, a path); default: the predictor's ``store``. A path holding something
                else than a store raises :class:`~napari_sam2.core.store.StoreError`.
            frame_kwargs: passed to ``open_frames`` (``frame_axis``, ``channel_axis``,
                ``position``, ``normalization``, ``contrast_limits``, ...).
        """
        if (video_path_or_frames is None) == (video_path is None):
            raise ValueError("Pass the stack once, as video_path_or_frames (or video_path).")
        source = video_path_or_frames if video_path is None else video_path
        store = self.store if store is _PREDICTOR_STORE else store
        check_store_spec(store)
        frames = open_frames(source, **frame_kwargs)
        try:
            feature_store = open_stack_store(store, self.model, frames)
        except BaseException:
            if frames is not source:
                frames.close()
            raise
        device = self.model.device
        storage = torch.device("cpu") if offload_state_to_cpu else device
        return VideoInferenceState(
            frames=frames,
            owns_frames=frames is not source,
            device=device,
            storage_device=storage,
            feature_cache=self.encoder.new_cache(),
            results=ResultStore(frames.num_frames, self.ram_window, storage, self.spill_dir),
            store=feature_store,
        )

    def reset_state(self, inference_state: VideoInferenceState) -> None:
        """Remove every object, prompt and result (and the spilled files); frames and cached
        features are kept."""
        self._check_state(inference_state).clear_objects()

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: VideoInferenceState,
        frame_idx: int,
        obj_id: Hashable,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> Output:
        """Add clicks and/or a box for one object on one frame.

        Args:
            points: ``N×2`` (x, y) clicks in frame pixels (``[0, 1]`` without
                ``normalize_coords``); labels: ``N`` ints, 1 foreground, 0 background.
            clear_old_points: replace the frame's earlier clicks (else append to them).
            box: ``(x0, y0, x1, y1)``; needs ``clear_old_points=True``.

        Returns:
            ``(frame_idx, obj_ids, video_res_masks)``: ``num_objects×1×H×W`` float logits of
            every object on that frame (``> 0`` = object).
        """
        state = self._check_state(inference_state)
        frame_idx = check_frame_idx(frame_idx, state.num_frames)
        obj_id = check_obj_id(obj_id)
        if box is not None and not clear_old_points:
            raise ValueError(
                "A box must come before any click: pass clear_old_points=True with a box."
            )
        new = point_inputs_from(
            points, labels, box, normalize_coords, (state.video_height, state.video_width),
            self.image_size, state.device,
        )
        obj = state.objects.get(obj_id)
        old = None if obj is None or clear_old_points else obj.point_inputs.get(frame_idx)
        return self._add_prompt(state, obj_id, frame_idx, concat_points(old, new), None)

    add_new_points = add_new_points_or_box  # SAM 2's deprecated name

    @torch.inference_mode()
    def add_new_mask(
        self, inference_state: VideoInferenceState, frame_idx: int, obj_id: Hashable, mask: Any
    ) -> Output:
        """Give one object's mask on one frame (``H×W``, bool or non-zero = object); returns
        as :meth:`add_new_points_or_box`."""
        state = self._check_state(inference_state)
        frame_idx = check_frame_idx(frame_idx, state.num_frames)
        obj_id = check_obj_id(obj_id)
        mask_inputs = mask_inputs_from(
            mask, (state.video_height, state.video_width), self.image_size, state.device
        )
        return self._add_prompt(state, obj_id, frame_idx, None, mask_inputs)

    def _add_prompt(
        self,
        state: VideoInferenceState,
        obj_id: Hashable,
        frame_idx: int,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
    ) -> Output:
        is_new = obj_id not in state.objects
        obj = state.add_object(obj_id) if is_new else state.objects[obj_id]
        store = state.results
        tracked = int(obj.tracked[frame_idx])
        is_init_cond_frame = tracked == NOT_TRACKED  # else: a correction of a tracked frame
        temp = obj.temp_outputs.get(frame_idx)
        is_cond = (
            is_init_cond_frame
            or self.add_all_frames_to_correct_as_cond
            or store.is_cond(obj.key, frame_idx)
            or (temp is not None and temp.is_cond)
        )
        prev_logits = None
        if point_inputs is not None:
            prev = temp.output if temp is not None else store.get(obj.key, frame_idx)
            if prev is not None:  # refine the latest mask with the new clicks
                prev_logits = torch.clamp(prev.pred_masks.to(state.device), -32.0, 32.0)
        try:
            out, _ = self.engine.run_frame(
                state, obj, frame_idx, is_init_cond_frame, point_inputs, mask_inputs,
                reverse=tracked == REVERSE, run_mem_encoder=False,
                prev_sam_mask_logits=prev_logits,
            )
        except BaseException:
            if is_new:
                state.remove_object(obj_id)
            raise
        if point_inputs is not None:
            obj.point_inputs[frame_idx] = point_inputs
            obj.mask_inputs.pop(frame_idx, None)
        else:
            obj.mask_inputs[frame_idx] = mask_inputs
            obj.point_inputs.pop(frame_idx, None)
        obj.temp_outputs[frame_idx] = TempOutput(out, is_cond)
        return frame_idx, state.obj_ids, self.engine.consolidated_masks(state, frame_idx)

    def _require_object(self, state: VideoInferenceState, obj_id: Any, what: str) -> ObjectState:
        obj = state.objects.get(check_obj_id(obj_id))
        if obj is None:
            raise UnknownObjectError(
                f"{what}: unknown obj_id {obj_id!r}; the objects are {state.obj_ids}."
            )
        return obj

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self,
        inference_state: VideoInferenceState,
        frame_idx: int,
        obj_id: Hashable,
        need_output: bool = True,
    ) -> Output | None:
        """Remove one object's clicks/box/mask on a frame. A prompted frame becomes an ordinary
        tracked frame (keeping its mask until the next propagation).

        Raises:
            KeyError: unknown ``obj_id``.
        """
        state = self._check_state(inference_state)
        frame_idx = check_frame_idx(frame_idx, state.num_frames)
        obj = self._require_object(state, obj_id, "clear_all_prompts_in_frame")
        obj.point_inputs.pop(frame_idx, None)
        obj.mask_inputs.pop(frame_idx, None)
        obj.temp_outputs.pop(frame_idx, None)
        if state.results.downgrade(obj.key, frame_idx):
            obj.tracked[frame_idx] = NOT_TRACKED  # a new click there starts from scratch
        if not need_output:
            return None
        return frame_idx, state.obj_ids, self.engine.consolidated_masks(state, frame_idx)

    @torch.inference_mode()
    def remove_object(
        self,
        inference_state: VideoInferenceState,
        obj_id: Hashable,
        strict: bool = False,
        need_output: bool = True,
    ) -> tuple[list[Hashable], list[tuple[int, torch.Tensor]]]:
        """Remove an object and all its results.

        Returns:
            ``(obj_ids, updated_frames)``: the remaining ids and, with ``need_output``, the
            masks ``(frame_idx, num_objects×1×H×W)`` of the frames where it had prompts.

        Raises:
            KeyError: (also a ``RuntimeError``) unknown ``obj_id`` with ``strict=True``; with
                ``strict=False`` it is ignored, as in SAM 2.
        """
        state = self._check_state(inference_state)
        obj_id = check_obj_id(obj_id)
        if obj_id not in state.objects:
            if strict:
                self._require_object(state, obj_id, "remove_object")
            return state.obj_ids, []
        if len(state.objects) == 1:
            self.reset_state(state)
            return state.obj_ids, []
        frames = state.objects[obj_id].input_frames
        state.remove_object(obj_id)
        updated = []
        if need_output:
            updated = [(t, self.engine.consolidated_masks(state, t)) for t in frames]
        return state.obj_ids, updated

    # ------------------------------------------------------------------ propagation
    def propagate_in_video(
        self,
        inference_state: VideoInferenceState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[Output]:
        """Track all objects from ``start_frame_idx`` (default: the first prompted frame) over
        ``max_frame_num_to_track`` further frames (default: to the end / start), as SAM 2:
        forward it yields frames ``start .. min(start + max, T - 1)``; in reverse
        ``start .. max(start - max, 0)``, and nothing when ``start`` is 0.

        Yields:
            ``(frame_idx, obj_ids, video_res_masks)``, masks ``num_objects×1×H×W`` logits.

        Raises (at the call):
            RuntimeError: no prompts; IndexError / ValueError: bad arguments.
        """
        state = self._check_state(inference_state)
        passes = passes_of_propagate_in_video(
            state, start_frame_idx, max_frame_num_to_track, reverse
        )
        return self.engine.run(state, passes)

    def propagate(
        self,
        inference_state: VideoInferenceState,
        direction: str = "forward",
        frame_range: tuple[int, int] | None = None,
        start_frame_idx: int | None = None,
    ) -> Iterator[Output]:
        """Track all objects from a start frame to the end(s) of ``frame_range``.

        Args:
            direction: ``"forward"`` yields ``start, start + 1, ..., last``; ``"backward"``
                yields ``start, start - 1, ..., first``; ``"both"`` does the forward pass and
                then the backward pass, so the start frame is yielded twice (the second result
                replaces the first; it differs only for objects not prompted there):
                ``(last - start + 1) + (start - first + 1)`` items.
            frame_range: ``(first, last)``, inclusive; default the whole stack.
            start_frame_idx: default the first prompted frame (of any object) in the range,
                the last one for ``"backward"``.

        Yields:
            ``(frame_idx, obj_ids, video_res_masks)`` as :meth:`propagate_in_video`.

        Raises (at the call):
            RuntimeError: no prompts; ValueError: bad ``direction`` / ``frame_range``, or no
            prompted frame in the range and no ``start_frame_idx``; IndexError: frames
            outside the stack.
        """
        state = self._check_state(inference_state)
        passes = passes_of_propagate(state, direction, frame_range, start_frame_idx)
        return self.engine.run(state, passes)

    def propagate_in_video_preflight(self, inference_state: VideoInferenceState) -> None:
        """Commit the results of new prompts to the memory bank, encoding their memories
        (propagations do this on their first step).

        Raises:
            RuntimeError: no object has prompts, or one object has no prompted
                (conditioning) frame left.
        """
        self.engine.commit_prompts(self._check_state(inference_state))

    # ------------------------------------------------------------------ features
    def encode_frame(self, inference_state: VideoInferenceState, frame_idx: int) -> None:
        """Encode one frame into the state's feature cache now, unless it is cached already
        (e.g. ahead of a click; see :class:`~napari_sam2.core.video.pre_encoder.PreEncoder`).

        Safe to call from another thread than the one adding prompts or propagating.

        Raises:
            IndexError: ``frame_idx`` outside ``[0, num_frames)``.
            FrameReadError: the frame could not be read.
        """
        state = self._check_state(inference_state)
        frame_idx = check_frame_idx(frame_idx, state.num_frames)
        with torch.inference_mode():
            self.encoder.features(state, frame_idx)

    # ------------------------------------------------------------------ checks
    def _check_state(self, inference_state: Any) -> VideoInferenceState:
        if not isinstance(inference_state, VideoInferenceState):
            raise TypeError(
                "inference_state must be the state returned by init_state(...), got "
                f"{type(inference_state).__name__}."
            )
        if inference_state.closed:
            raise RuntimeError("This inference state was closed; create a new one with init_state.")
        return inference_state
