"""The per-frame machinery of the video predictor: encode frames on demand, run one tracking
step per object, encode memories, commit prompts, and combine objects into output masks.

:class:`VideoInferenceBase` is the base of
:class:`~napari_sam2.core.video.predictor.SAM2VideoPredictor`; its method names follow SAM 2's
video predictor so that the two are easy to compare.

Frames are read from the state's :class:`~napari_sam2.core.stacks.source.FrameSource` only
when their features are needed, converted with
:func:`~napari_sam2.core.stacks.model_input.video_frame_to_tensor` (bicubic resize to ``image_size ×
image_size`` as SAM 2's video frame loader, ``uint8`` frames as 8-bit images -> ImageNet
mean/std) and encoded one at a time; the features of the last few frames stay in the state's
:class:`~napari_sam2.core.video.feature_cache.FeatureCache`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable

import torch
import torch.nn.functional as F

from ...models.postprocessing import fill_holes_in_mask_scores
from ...models.sam2 import NO_OBJ_SCORE
from ..stacks.model_input import check_image, video_frame_to_tensor
from ..stacks.source import frame_read_lock
from .prompts import check_frame_idx
from .frame_output import FrameOutput
from .state import FORWARD, REVERSE, ObjectState, VideoInferenceState

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base

__all__ = ["FrameFeatures", "VideoInferenceBase"]

_MIN_AUTO_CACHE = 4  # frames, before the first one is encoded and its size known


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """Image-encoder output of one frame (batch of 1), as cached."""

    backbone_fpn: tuple[torch.Tensor, ...]
    vision_pos_enc: tuple[torch.Tensor, ...]


class VideoInferenceBase:
    """Model, settings and per-frame helpers shared by the public video predictor.

    Attributes:
        model: the SAM 2 network (eval mode).
        fill_hole_area: fill background holes of at most this many low-res pixels in each
            predicted mask (0 disables).
        non_overlap_masks: in the returned masks, keep only the highest-scoring object per pixel.
        clear_non_cond_mem_around_input: after a prompt, forget the object's tracked results
            within ``num_maskmem`` (times the memory stride) frames of it.
        add_all_frames_to_correct_as_cond: a correction on a tracked frame makes it a
            conditioning frame.
        feature_cache_size: fixed capacity of each state's feature cache, or ``None`` to size
            it by ``feature_cache_mib``.
        feature_cache_mib: memory budget of the feature cache when its size is not fixed.
    """

    model: SAM2Base
    fill_hole_area: int
    non_overlap_masks: bool
    clear_non_cond_mem_around_input: bool
    add_all_frames_to_correct_as_cond: bool
    feature_cache_size: int | None
    feature_cache_mib: float

    # ------------------------------------------------------------------ features
    def _encode_frame(self, state: VideoInferenceState, frame_idx: int) -> FrameFeatures:
        """Features of one frame, from the cache or by reading and encoding the frame.

        Thread-safe: reads of one frame source are serialised (see :func:`frame_read_lock`),
        and if another thread (the background pre-encoder) is encoding this frame now, this
        waits for its result instead of encoding the frame a second time.
        """

        def compute() -> FrameFeatures:
            with frame_read_lock(state.frames):
                frame = state.frames.read(frame_idx)
            image = check_image(frame, f"frame {frame_idx}")
            dtype = next(self.model.parameters()).dtype
            x = video_frame_to_tensor(image, self.model.image_size, state.device)[None].to(dtype)
            out = self.model.forward_image(x)
            feats = FrameFeatures(tuple(out["backbone_fpn"]), tuple(out["vision_pos_enc"]))
            self._size_feature_cache(state, feats)
            return feats

        return state.feature_cache.get_or_compute(frame_idx, compute)

    def _size_feature_cache(self, state: VideoInferenceState, feats: FrameFeatures) -> None:
        """With no fixed ``feature_cache_size``, let the cache hold as many frames as fit in
        ``feature_cache_mib`` (never fewer than it holds now). The position encodings are
        shared by all frames and not counted."""
        if self.feature_cache_size is not None:
            return
        per_frame = sum(t.numel() * t.element_size() for t in feats.backbone_fpn)
        fit = int(self.feature_cache_mib * 2**20 // max(per_frame, 1))
        cache = state.feature_cache
        if fit > cache.max_items:
            cache.max_items = fit

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
            self._encode_frame(state, frame_idx)

    def _get_image_feature(
        self, state: VideoInferenceState, frame_idx: int, batch_size: int = 1
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """``(vision_feats, vision_pos_embeds, feat_sizes)`` of a frame for ``batch_size``
        objects (see ``SAM2Base._prepare_backbone_features``)."""
        feats = self._encode_frame(state, frame_idx)
        expanded = {
            "backbone_fpn": [x.expand(batch_size, -1, -1, -1) for x in feats.backbone_fpn],
            "vision_pos_enc": [x.expand(batch_size, -1, -1, -1) for x in feats.vision_pos_enc],
        }
        _, vision_feats, vision_pos, feat_sizes = self.model._prepare_backbone_features(expanded)
        return vision_feats, vision_pos, feat_sizes

    # ------------------------------------------------------------------ one frame
    def _run_single_frame_inference(
        self,
        state: VideoInferenceState,
        obj: ObjectState,
        frame_idx: int,
        is_init_cond_frame: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> tuple[FrameOutput, torch.Tensor]:
        """Track one object on one frame from its prompts and its memory bank.

        Returns:
            ``(compact output to store, 1×1×h×w low-res logits on the compute device)``.
        """
        feats, pos, sizes = self._get_image_feature(state, frame_idx)
        if point_inputs is not None and mask_inputs is not None:
            raise ValueError("A frame takes either clicks/box or a mask, not both at once.")
        out = self.model.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=feats,
            current_vision_pos_embeds=pos,
            feat_sizes=sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=state.frame_store.memory_bank(obj.key),
            num_frames=state.num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        storage = state.storage_device
        memory = out["maskmem_features"]
        if memory is not None:
            memory = memory.to(torch.bfloat16).to(storage)  # as SAM 2's predictor stores it
        masks = out["pred_masks"]
        if self.fill_hole_area > 0:
            masks = fill_holes_in_mask_scores(masks, self.fill_hole_area)
        compact = FrameOutput(
            pred_masks=masks.to(storage),
            obj_ptr=out["obj_ptr"].to(storage),
            object_score_logits=out["object_score_logits"].to(storage),
            maskmem_features=memory,
            maskmem_pos_enc=state.frame_store.shared_pos_enc(out["maskmem_pos_enc"]),
        )
        return compact, masks

    def _run_memory_encoder(
        self,
        state: VideoInferenceState,
        frame_idx: int,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Encode one object's memory on a frame: ``(bfloat16 features, shared pos. enc.)``."""
        feats, _, sizes = self._get_image_feature(state, frame_idx)
        features, pos_enc = self.model._encode_new_memory(
            current_vision_feats=feats,
            feat_sizes=sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits.to(state.device),
            is_mask_from_pts=is_mask_from_pts,
        )
        features = features.to(torch.bfloat16).to(state.storage_device)
        return features, state.frame_store.shared_pos_enc(pos_enc)

    # ------------------------------------------------------------------ outputs
    def _to_video_res(self, state: VideoInferenceState, masks: torch.Tensor) -> torch.Tensor:
        """``N×1×h×w`` logits -> ``N×1×H×W`` at the stack's resolution on the compute device
        (bilinear), with the non-overlap constraint if enabled."""
        masks = masks.to(state.device, non_blocking=True)
        size = (state.video_height, state.video_width)
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        if self.non_overlap_masks:
            masks = self.model._apply_non_overlapping_constraints(masks)
        return masks

    def _consolidated_masks(self, state: VideoInferenceState, frame_idx: int) -> torch.Tensor:
        """Latest masks of every object on a frame at the stack's resolution: an uncommitted
        prompt result if there is one, else the stored result, else ``NO_OBJ_SCORE``."""
        size = (state.video_height, state.video_width)
        masks = torch.full(
            (len(state.objects), 1, *size), NO_OBJ_SCORE, dtype=torch.float32,
            device=state.storage_device,
        )
        for i, obj in enumerate(state.objects.values()):
            temp = obj.temp_outputs.get(frame_idx)
            out = temp.output if temp is not None else state.frame_store.get(obj.key, frame_idx)
            if out is None:
                continue
            m = out.pred_masks
            if tuple(m.shape[-2:]) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            masks[i : i + 1] = m
        return self._to_video_res(state, masks)

    # ------------------------------------------------------------------ commit prompts
    def _clear_non_cond_mem_around_input(
        self, state: VideoInferenceState, obj: ObjectState, frame_idx: int
    ) -> None:
        """Forget the object's tracked (non-conditioning) results near a prompted frame."""
        reach = self.model.memory_temporal_stride_for_eval * self.model.num_maskmem
        store = state.frame_store
        for t in range(max(frame_idx - reach, 0), min(frame_idx + reach, state.num_frames - 1) + 1):
            if not store.is_cond(obj.key, t):
                store.pop(obj.key, t)

    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state: VideoInferenceState) -> None:
        """Commit the results of new prompts to the memory bank, encoding their memories.

        Raises:
            RuntimeError: no object has prompts, or one object has no prompted
                (conditioning) frame left.
        """
        state = self._check_state(inference_state)
        if not state.objects:
            raise RuntimeError(
                "No prompts yet: add points, a box or a mask for at least one object "
                "(add_new_points_or_box / add_new_mask) before propagating."
            )
        size = (self.model.image_size, self.model.image_size)
        store = state.frame_store
        for obj in state.objects.values():
            temps = list(obj.temp_outputs.items())
            # ordinary frames first, then conditioning ones (which win on the same frame)
            for frame_idx, temp in [t for t in temps if not t[1].is_cond] + [
                t for t in temps if t[1].is_cond
            ]:
                out = temp.output
                if out.maskmem_features is None:
                    high_res = F.interpolate(
                        out.pred_masks.to(state.device), size=size, mode="bilinear",
                        align_corners=False,
                    )
                    # the user saw these masks: encode them binarised, as clicks
                    memory = self._run_memory_encoder(
                        state, frame_idx, high_res, out.object_score_logits, True
                    )
                    out = out.with_memory(*memory)
                if temp.is_cond or not store.is_cond(obj.key, frame_idx):
                    store.put(obj.key, frame_idx, out, cond=temp.is_cond)
                del obj.temp_outputs[frame_idx]
                if self.clear_non_cond_mem_around_input:
                    self._clear_non_cond_mem_around_input(state, obj, frame_idx)
            if not store.cond_outputs(obj.key):
                raise RuntimeError(
                    f"Object id {obj.obj_id!r} has no prompted frame left (its prompts were "
                    "cleared): add points, a box or a mask for it, or remove it with "
                    "remove_object."
                )

    # ------------------------------------------------------------------ tracking
    @torch.inference_mode()
    def _track_frames(
        self, state: VideoInferenceState, order: Iterable[int], reverse: bool
    ) -> Iterator[tuple[int, list[Hashable], torch.Tensor]]:
        """Track every object over ``order`` and yield ``(frame_idx, obj_ids, masks)``.

        A frame's results are stored for all objects before it is yielded, so stopping the
        iteration (``close()``, an exception such as a ``FrameReadError`` on a later frame)
        keeps everything yielded. The objects are those present at the start; the generator
        stops if one of them is removed (or the state reset or closed) meanwhile.
        """
        store = state.frame_store
        objects = list(state.objects.values())
        obj_ids = [obj.obj_id for obj in objects]
        direction = REVERSE if reverse else FORWARD
        for frame_idx in order:
            if state.closed or any(obj.key not in store for obj in objects):
                return
            results: list[tuple[ObjectState, FrameOutput | None, torch.Tensor]] = []
            for obj in objects:
                if store.is_cond(obj.key, frame_idx):  # prompted: its result is final
                    out = store.get(obj.key, frame_idx)
                    results.append((obj, None, out.pred_masks.to(state.device)))
                    if self.clear_non_cond_mem_around_input:
                        self._clear_non_cond_mem_around_input(state, obj, frame_idx)
                    continue
                out, masks = self._run_single_frame_inference(
                    state, obj, frame_idx, is_init_cond_frame=False, point_inputs=None,
                    mask_inputs=None, reverse=reverse, run_mem_encoder=True,
                )
                results.append((obj, out, masks))
            for obj, out, _ in results:
                if out is not None:
                    store.put(obj.key, frame_idx, out, cond=False)
                obj.tracked[frame_idx] = direction
            masks = torch.cat([m for _, _, m in results], dim=0)
            yield frame_idx, list(obj_ids), self._to_video_res(state, masks)

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
