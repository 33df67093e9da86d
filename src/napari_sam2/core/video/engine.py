"""The tracking engine: one frame for every object -- a tracking step per object from its
prompts and memory bank, memory encoding, committing prompts, and the objects' masks combined
at the stack's resolution.

:class:`TrackingEngine` is what :class:`~napari_sam2.core.video.predictor.SAM2VideoPredictor`
runs; it gets image features from a
:class:`~napari_sam2.core.video.frame_encoder.FrameEncoder`, reads and writes the state's
:class:`~napari_sam2.core.video.results.ResultStore`, and calls the network's ``track_step``
(:mod:`napari_sam2.models.sam2`). It holds no state of its own: everything about a stack is in
the :class:`~napari_sam2.core.video.state.VideoInferenceState` passed to each call.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...models.postprocessing import fill_holes_in_mask_scores
from ...models.sam2 import NO_OBJ_SCORE
from .frame_encoder import FrameEncoder
from .frame_output import FrameOutput
from .state import FORWARD, REVERSE, ObjectState, VideoInferenceState

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base

__all__ = ["Output", "TrackingEngine"]

#: ``(frame_idx, obj_ids, num_objects×1×H×W mask logits)``, as SAM 2's predictor yields.
Output = tuple[int, list[Hashable], torch.Tensor]
#: SAM 2's video predictor encodes a prompted frame's memory from the 0/1 mask the user saw;
#: the engine applies it to any network, also one built with the image settings.
VIDEO_BINARIZE_MASK_FROM_PTS = True
#: One pass of a propagation: the frames in order, and whether it runs in reverse.
Pass = tuple[range, bool]


class TrackingEngine:
    """Track every object of a state frame by frame.

    Args:
        model: the SAM 2 network (eval mode).
        encoder: the frame encoder giving image features.
        fill_hole_area: fill background holes of at most this many low-res pixels in each
            predicted mask (0 disables).
        non_overlap_masks: in the returned masks, keep only the highest-scoring object per pixel.
        clear_non_cond_mem_around_input: after a prompt, forget the object's tracked results
            within ``num_maskmem`` (times the memory stride) frames of it.
    """

    def __init__(
        self,
        model: SAM2Base,
        encoder: FrameEncoder,
        *,
        fill_hole_area: int = 0,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input

    # ------------------------------------------------------------------ one frame
    def run_frame(
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
        feats, pos, sizes = self.encoder.batched(state, frame_idx)
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
            output_dict=state.results.memory_bank(obj.key),
            num_frames=state.num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
            binarize_mask_from_pts=VIDEO_BINARIZE_MASK_FROM_PTS,
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
            maskmem_pos_enc=state.results.shared_pos_enc(out["maskmem_pos_enc"]),
        )
        return compact, masks

    def encode_memory(
        self,
        state: VideoInferenceState,
        frame_idx: int,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Encode one object's memory on a frame: ``(bfloat16 features, shared pos. enc.)``."""
        feats, _, sizes = self.encoder.batched(state, frame_idx)
        features, pos_enc = self.model._encode_new_memory(
            current_vision_feats=feats,
            feat_sizes=sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits.to(state.device),
            is_mask_from_pts=is_mask_from_pts,
            binarize_mask_from_pts=VIDEO_BINARIZE_MASK_FROM_PTS,
        )
        features = features.to(torch.bfloat16).to(state.storage_device)
        return features, state.results.shared_pos_enc(pos_enc)

    # ------------------------------------------------------------------ outputs
    def to_video_res(self, state: VideoInferenceState, masks: torch.Tensor) -> torch.Tensor:
        """``N×1×h×w`` logits -> ``N×1×H×W`` at the stack's resolution on the compute device
        (bilinear), with the non-overlap constraint if enabled."""
        masks = masks.to(state.device, non_blocking=True)
        size = (state.video_height, state.video_width)
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        if self.non_overlap_masks:
            masks = self.model._apply_non_overlapping_constraints(masks)
        return masks

    def consolidated_masks(self, state: VideoInferenceState, frame_idx: int) -> torch.Tensor:
        """Latest masks of every object on a frame at the stack's resolution: an uncommitted
        prompt result if there is one, else the stored result, else ``NO_OBJ_SCORE``."""
        size = (state.video_height, state.video_width)
        masks = torch.full(
            (len(state.objects), 1, *size), NO_OBJ_SCORE, dtype=torch.float32,
            device=state.storage_device,
        )
        for i, obj in enumerate(state.objects.values()):
            temp = obj.temp_outputs.get(frame_idx)
            out = temp.output if temp is not None else state.results.get(obj.key, frame_idx)
            if out is None:
                continue
            m = out.pred_masks
            if tuple(m.shape[-2:]) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            masks[i : i + 1] = m
        return self.to_video_res(state, masks)

    # ------------------------------------------------------------------ commit prompts
    def forget_around(
        self, state: VideoInferenceState, obj: ObjectState, frame_idx: int
    ) -> None:
        """Forget the object's tracked (non-conditioning) results near a prompted frame."""
        reach = self.model.memory_temporal_stride_for_eval * self.model.num_maskmem
        store = state.results
        for t in range(max(frame_idx - reach, 0), min(frame_idx + reach, state.num_frames - 1) + 1):
            if not store.is_cond(obj.key, t):
                store.pop(obj.key, t)

    @torch.inference_mode()
    def commit_prompts(self, state: VideoInferenceState) -> None:
        """Commit the results of new prompts to the memory bank, encoding their memories.

        Raises:
            RuntimeError: no object has prompts, or one object has no prompted
                (conditioning) frame left.
        """
        if not state.objects:
            raise RuntimeError(
                "No prompts yet: add points, a box or a mask for at least one object "
                "(add_new_points_or_box / add_new_mask) before propagating."
            )
        size = (self.model.image_size, self.model.image_size)
        store = state.results
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
                    memory = self.encode_memory(
                        state, frame_idx, high_res, out.object_score_logits, True
                    )
                    out = out.with_memory(*memory)
                if temp.is_cond or not store.is_cond(obj.key, frame_idx):
                    store.put(obj.key, frame_idx, out, cond=temp.is_cond)
                del obj.temp_outputs[frame_idx]
                if self.clear_non_cond_mem_around_input:
                    self.forget_around(state, obj, frame_idx)
            if not store.cond_outputs(obj.key):
                raise RuntimeError(
                    f"Object id {obj.obj_id!r} has no prompted frame left (its prompts were "
                    "cleared): add points, a box or a mask for it, or remove it with "
                    "remove_object."
                )

    # ------------------------------------------------------------------ tracking
    @torch.inference_mode()
    def track(
        self, state: VideoInferenceState, order: Iterable[int], reverse: bool
    ) -> Iterator[Output]:
        """Track every object over ``order`` and yield ``(frame_idx, obj_ids, masks)``.

        A frame's results are stored for all objects before it is yielded, so stopping the
        iteration (``close()``, an exception such as a ``FrameReadError`` on a later frame)
        keeps everything yielded. The objects are those present at the start; the generator
        stops if one of them is removed (or the state reset or closed) meanwhile.
        """
        store = state.results
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
                        self.forget_around(state, obj, frame_idx)
                    continue
                out, masks = self.run_frame(
                    state, obj, frame_idx, is_init_cond_frame=False, point_inputs=None,
                    mask_inputs=None, reverse=reverse, run_mem_encoder=True,
                )
                results.append((obj, out, masks))
            for obj, out, _ in results:
                if out is not None:
                    store.put(obj.key, frame_idx, out, cond=False)
                obj.tracked[frame_idx] = direction
            masks = torch.cat([m for _, _, m in results], dim=0)
            yield frame_idx, list(obj_ids), self.to_video_res(state, masks)

    @torch.inference_mode()
    def run(self, state: VideoInferenceState, passes: Sequence[Pass]) -> Iterator[Output]:
        """Commit new prompts (on the first step), then track over each pass in turn."""
        self.commit_prompts(state)
        for order, reverse in passes:
            yield from self.track(state, order, reverse)
