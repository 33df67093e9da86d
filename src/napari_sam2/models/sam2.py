"""The SAM 2 network: image encoder, memory attention, memory encoder and SAM heads combined.

:class:`SAM2Base` owns the parameters and the per-frame tracking step. The SAM heads, memory
read-out and memory writing live in mixins (``sam_heads.py``, ``memory_conditioning.py``,
``memory_writing.py``); the method names, signatures, return values and state-dict keys are
those of the reference implementation, so predictors written against SAM 2's interfaces work.

Conventions: ``B`` objects (batch), ``C`` = ``hidden_dim`` (256), ``C_mem`` = ``mem_dim`` (64),
``h×w`` the lowest-resolution feature grid (``image_size / backbone_stride``), ``S`` =
``image_size``. Flattened features are sequence-first: ``hw×B×C``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from .memory_conditioning import MemoryConditioningMixin, select_closest_cond_frames
from .memory_writing import MemoryWritingMixin
from .sam_heads import NO_OBJ_SCORE, SamHeadOutputs, SamHeadsMixin

__all__ = ["SAM2Base", "NO_OBJ_SCORE", "SamHeadOutputs", "select_closest_cond_frames"]

logger = logging.getLogger(__name__)


class SAM2Base(SamHeadsMixin, MemoryConditioningMixin, MemoryWritingMixin, nn.Module):
    """SAM 2 for images and videos (use a predictor for inference; ``forward`` is not used).

    Args:
        image_encoder: module with a ``neck.d_model`` attribute returning ``{"backbone_fpn",
            "vision_pos_enc", "vision_features"}``.
        memory_attention: conditions current-frame tokens on memory tokens.
        memory_encoder: turns frame features plus a mask into a memory (``out_proj`` sets
            ``mem_dim``).
        num_maskmem: spatial memories attended to: conditioning frames plus up to
            ``num_maskmem - 1`` previous frames (0 disables memory).
        image_size: side of the square model input, in pixels.
        backbone_stride: stride of the lowest-resolution backbone features.
        sigmoid_scale_for_mem_enc, sigmoid_bias_for_mem_enc: affine map applied to mask
            probabilities before the memory encoder.
        binarize_mask_from_pts_for_mem_enc: in eval mode, encode masks from clicks as 0/1.
        use_mask_input_as_output_without_sam: take mask prompts as the output directly.
        max_cond_frames_in_attn: at most this many (temporally closest) conditioning frames are
            attended to; -1 for all.
        directly_add_no_mem_embed: on initial conditioning frames add ``no_mem_embed`` to the
            features instead of running memory attention on a dummy memory.
        use_high_res_features_in_sam: feed stride-4/8 features to the mask decoder.
        multimask_output_in_sam: predict 3 masks for ambiguous prompts on initial
            conditioning frames.
        multimask_min_pt_num, multimask_max_pt_num: click-count range (a box counts as two)
            for which multimask output is used.
        multimask_output_for_tracking: also use multimask output on tracked frames.
        use_multimask_token_for_obj_ptr: take the object pointer from the chosen multimask token.
        iou_prediction_use_sigmoid: squash IoU predictions to ``[0, 1]``.
        memory_temporal_stride_for_eval: stride ``r`` between the older memory frames in eval.
        non_overlap_masks_for_mem_enc: in eval, suppress overlaps between objects before
            encoding memories.
        use_obj_ptrs_in_encoder: attend to object pointers of other frames.
        max_obj_ptrs_in_encoder: maximum number of such pointers.
        add_tpos_enc_to_obj_ptrs: give pointers a temporal position encoding.
        proj_tpos_enc_in_obj_ptrs: project that encoding with ``obj_ptr_tpos_proj``.
        use_signed_tpos_enc_to_obj_ptrs: signed (rather than absolute) temporal distances.
        only_obj_ptrs_in_the_past_for_eval: in eval, ignore conditioning-frame pointers from
            the future.
        pred_obj_scores: predict whether the object is present.
        pred_obj_scores_mlp: use an MLP for that prediction.
        fixed_no_obj_ptr: absent objects get exactly ``no_obj_ptr`` as pointer.
        soft_no_obj_ptr: blend in ``no_obj_ptr`` by the presence probability.
        use_mlp_for_obj_ptr_proj: 3-layer MLP (rather than linear) pointer projection.
        no_obj_embed_spatial: add a learned embedding to memories of frames without the object.
        sam_mask_decoder_extra_args: extra keyword arguments of ``MaskDecoder``.
        compile_image_encoder: wrap the image encoder's ``forward`` in ``torch.compile``
            (``mode="max-autotune"``, as the reference). Compilation happens at the first call
            and needs a working Inductor backend (a C++ compiler on CPU, Triton on GPU).
        fill_hole_area: not used by the network itself; kept for the video predictor, which
            fills background holes of at most this many low-res pixels
            (:func:`napari_sam2.models.postprocessing.fill_holes_in_mask_scores`). 0 disables.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        num_maskmem: int = 7,
        image_size: int = 512,
        backbone_stride: int = 16,
        sigmoid_scale_for_mem_enc: float = 1.0,
        sigmoid_bias_for_mem_enc: float = 0.0,
        binarize_mask_from_pts_for_mem_enc: bool = False,
        use_mask_input_as_output_without_sam: bool = False,
        max_cond_frames_in_attn: int = -1,
        directly_add_no_mem_embed: bool = False,
        use_high_res_features_in_sam: bool = False,
        multimask_output_in_sam: bool = False,
        multimask_min_pt_num: int = 1,
        multimask_max_pt_num: int = 1,
        multimask_output_for_tracking: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        memory_temporal_stride_for_eval: int = 1,
        non_overlap_masks_for_mem_enc: bool = False,
        use_obj_ptrs_in_encoder: bool = False,
        max_obj_ptrs_in_encoder: int = 16,
        add_tpos_enc_to_obj_ptrs: bool = True,
        proj_tpos_enc_in_obj_ptrs: bool = False,
        use_signed_tpos_enc_to_obj_ptrs: bool = False,
        only_obj_ptrs_in_the_past_for_eval: bool = False,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        fixed_no_obj_ptr: bool = False,
        soft_no_obj_ptr: bool = False,
        use_mlp_for_obj_ptr_proj: bool = False,
        no_obj_embed_spatial: bool = False,
        sam_mask_decoder_extra_args: Mapping[str, Any] | None = None,
        compile_image_encoder: bool = False,
        fill_hole_area: int = 0,
    ) -> None:
        super().__init__()
        if proj_tpos_enc_in_obj_ptrs and not add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs requires add_tpos_enc_to_obj_ptrs.")
        if fixed_no_obj_ptr and not (pred_obj_scores and use_obj_ptrs_in_encoder):
            raise ValueError(
                "fixed_no_obj_ptr requires pred_obj_scores and use_obj_ptrs_in_encoder."
            )

        # Image backbone; levels 0-2 are used with high-res features, otherwise only level 2.
        self.image_encoder = image_encoder
        self.use_high_res_features_in_sam = use_high_res_features_in_sam
        self.num_feature_levels = 3 if use_high_res_features_in_sam else 1
        self.hidden_dim: int = image_encoder.neck.d_model

        # Object pointers.
        self.use_obj_ptrs_in_encoder = use_obj_ptrs_in_encoder
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        if use_obj_ptrs_in_encoder:
            # Maps a 0/1 mask prompt to stride-4 SAM logits, to get a pointer for mask inputs.
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.add_tpos_enc_to_obj_ptrs = add_tpos_enc_to_obj_ptrs
        self.proj_tpos_enc_in_obj_ptrs = proj_tpos_enc_in_obj_ptrs
        self.use_signed_tpos_enc_to_obj_ptrs = use_signed_tpos_enc_to_obj_ptrs
        self.only_obj_ptrs_in_the_past_for_eval = only_obj_ptrs_in_the_past_for_eval

        # Memory attention and memory encoder.
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.mem_dim: int = self.hidden_dim
        out_proj = getattr(memory_encoder, "out_proj", None)
        if out_proj is not None and hasattr(out_proj, "weight"):
            self.mem_dim = out_proj.weight.shape[0]  # memories are compressed to mem_dim
        self.num_maskmem = num_maskmem
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, self.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc):
            trunc_normal_(p, std=0.02)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        self.sigmoid_scale_for_mem_enc = sigmoid_scale_for_mem_enc
        self.sigmoid_bias_for_mem_enc = sigmoid_bias_for_mem_enc
        self.binarize_mask_from_pts_for_mem_enc = binarize_mask_from_pts_for_mem_enc
        self.non_overlap_masks_for_mem_enc = non_overlap_masks_for_mem_enc
        self.memory_temporal_stride_for_eval = memory_temporal_stride_for_eval
        self.max_cond_frames_in_attn = max_cond_frames_in_attn

        # SAM heads.
        self.use_mask_input_as_output_without_sam = use_mask_input_as_output_without_sam
        self.multimask_output_in_sam = multimask_output_in_sam
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.iou_prediction_use_sigmoid = iou_prediction_use_sigmoid
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.sam_mask_decoder_extra_args = sam_mask_decoder_extra_args
        self.pred_obj_scores = pred_obj_scores
        self.pred_obj_scores_mlp = pred_obj_scores_mlp
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.soft_no_obj_ptr = soft_no_obj_ptr
        if pred_obj_scores and use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
            trunc_normal_(self.no_obj_ptr, std=0.02)
        self.use_mlp_for_obj_ptr_proj = use_mlp_for_obj_ptr_proj
        self.no_obj_embed_spatial: nn.Parameter | None = None
        if no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
            trunc_normal_(self.no_obj_embed_spatial, std=0.02)
        self._build_sam_heads()

        self.fill_hole_area = fill_hole_area
        if compile_image_encoder:
            # Compile forward only (not the module), so checkpoints still load by key.
            logger.info("Compiling the image encoder; the first forward pass will be slow.")
            self.image_encoder.forward = torch.compile(  # type: ignore[method-assign]
                self.image_encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
            )

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("SAM2Base has no forward(); use an image or video predictor.")

    def forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        """Run the image encoder on a ``N×3×S×S`` normalised image batch.

        Returns:
            ``{"vision_features": N×C×h×w, "vision_pos_enc": [...], "backbone_fpn": [...]}``,
            lists of ``N×C×4h×4w``, ``N×C×2h×2w`` and ``N×C×h×w`` maps. With high-res features
            the first two ``backbone_fpn`` maps are already projected by the decoder's
            ``conv_s0``/``conv_s1`` (``C/8`` and ``C/4`` channels), once per image.
        """
        backbone_out = self.image_encoder(img_batch)
        if self.use_high_res_features_in_sam:
            fpn = backbone_out["backbone_fpn"]
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return backbone_out

    def _prepare_backbone_features(
        self, backbone_out: dict[str, Any]
    ) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Flatten the used feature levels to sequence-first tokens.

        Returns:
            ``(backbone_out_copy, vision_feats, vision_pos_embeds, feat_sizes)`` with, for each of
            the last ``num_feature_levels`` levels, ``HW×N×C_l`` features, ``HW×N×C`` position
            encodings and the ``(H, W)`` size.
        """
        backbone_out = backbone_out.copy()
        fpn, pos = backbone_out["backbone_fpn"], backbone_out["vision_pos_enc"]
        if len(fpn) != len(pos) or len(fpn) < self.num_feature_levels:
            raise ValueError(
                f"Expected at least {self.num_feature_levels} matching feature levels, got "
                f"{len(fpn)} features and {len(pos)} position encodings."
            )
        feature_maps = fpn[-self.num_feature_levels :]
        pos_maps = pos[-self.num_feature_levels :]
        feat_sizes = [(x.shape[-2], x.shape[-1]) for x in pos_maps]
        # N×C×H×W -> HW×N×C
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in feature_maps]
        vision_pos_embeds = [x.flatten(2).permute(2, 0, 1) for x in pos_maps]
        return backbone_out, vision_feats, vision_pos_embeds, feat_sizes

    def _track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: Mapping[str, Mapping[int, Any]],
        num_frames: int | None,
        track_in_reverse: bool,
        prev_sam_mask_logits: torch.Tensor | None,
    ) -> tuple[dict[str, Any], SamHeadOutputs, list[torch.Tensor] | None, torch.Tensor]:
        """Predict one frame without encoding its memory (see :meth:`track_step`).

        Returns:
            ``(current_out, sam_outputs, high_res_features, pix_feat)``: the partial output dict
            (prompts only), the SAM-head outputs, the ``B×C_l×H_l×W_l`` high-res maps (or
            ``None``) and the ``B×C×h×w`` (memory-conditioned) features given to the heads.
        """
        current_out: dict[str, Any] = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        high_res_features = None
        if len(current_vision_feats) > 1:
            high_res_features = [
                x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)  # HW×B×C_l -> B×C_l×H×W
                for x, s in zip(current_vision_feats[:-1], feat_sizes[:-1])
            ]
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            pix_feat = current_vision_feats[-1].permute(1, 2, 0)  # B×C×hw
            pix_feat = pix_feat.view(-1, self.hidden_dim, *feat_sizes[-1])  # B×C×h×w
            sam_outputs = self._use_mask_as_output(pix_feat, high_res_features, mask_inputs)
        else:
            pix_feat = self._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=current_vision_feats[-1:],
                current_vision_pos_embeds=current_vision_pos_embeds[-1:],
                feat_sizes=feat_sizes[-1:],
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
            if prev_sam_mask_logits is not None:
                # Earlier low-res logits refined together with new clicks.
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("prev_sam_mask_logits needs point inputs and no mask input.")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res_features,
                multimask_output=self._use_multimask(is_init_cond_frame, point_inputs),
            )
        return current_out, sam_outputs, high_res_features, pix_feat

    def _encode_memory_in_output(
        self,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        run_mem_encoder: bool,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        current_out: dict[str, Any],
        binarize_mask_from_pts: bool | None = None,
    ) -> None:
        """Set ``maskmem_features`` and ``maskmem_pos_enc`` of ``current_out`` (``None``:
        skipped)."""
        if run_mem_encoder and self.num_maskmem > 0:
            features, pos_enc = self._encode_new_memory(
                current_vision_feats=current_vision_feats,
                feat_sizes=feat_sizes,
                pred_masks_high_res=high_res_masks,
                object_score_logits=object_score_logits,
                is_mask_from_pts=point_inputs is not None,
                binarize_mask_from_pts=binarize_mask_from_pts,
            )
            current_out["maskmem_features"] = features
            current_out["maskmem_pos_enc"] = pos_enc
        else:
            current_out["maskmem_features"] = None
            current_out["maskmem_pos_enc"] = None

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: Mapping[str, Mapping[int, Any]],
        num_frames: int | None,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: torch.Tensor | None = None,
        *,
        binarize_mask_from_pts: bool | None = None,
    ) -> dict[str, Any]:
        """Segment one frame from its prompts and the memory bank, optionally encoding its memory.

        Args:
            frame_idx: index of the frame in the video.
            is_init_cond_frame: a prompted frame that does not read memory.
            current_vision_feats, current_vision_pos_embeds, feat_sizes: from
                :meth:`_prepare_backbone_features` (features expanded to ``B`` objects).
            point_inputs: ``{"point_coords": B×P×2, "point_labels": B×P}`` or ``None``.
            mask_inputs: ``B×1×S×S`` mask prompt or ``None`` (not together with points).
            output_dict: the memory bank, ``{"cond_frame_outputs": {t: out},
                "non_cond_frame_outputs": {t: out}}`` of earlier ``track_step`` outputs
                (``maskmem_features`` may be stored in bfloat16 and/or on another device).
            num_frames: number of frames of the video.
            track_in_reverse: tracking runs towards lower frame indices.
            run_mem_encoder: also encode this frame's memory.
            prev_sam_mask_logits: ``B×1×4h×4w`` logits fed with new clicks as a mask prompt.
            binarize_mask_from_pts: encode the memory of a prompted frame from its 0/1 mask
                (SAM 2's video setting) rather than its sigmoid; ``None``: the network's
                ``binarize_mask_from_pts_for_mem_enc``. Lets a video predictor use its own
                setting on a network built for images, without changing the network.

        Returns:
            A dict with ``point_inputs`` and ``mask_inputs`` (as given), ``pred_masks``
            (``B×1×4h×4w`` logits), ``pred_masks_high_res`` (``B×1×S×S`` logits), ``obj_ptr``
            (``B×C``), ``object_score_logits`` (``B×1``, eval mode only), ``maskmem_features``
            (``B×C_mem×h×w`` in the compute dtype, or ``None``) and ``maskmem_pos_enc``
            (``[B×C_mem×h×w]`` or ``None``).
        """
        current_out, sam_outputs, _, _ = self._track_step(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            num_frames,
            track_in_reverse,
            prev_sam_mask_logits,
        )
        current_out["pred_masks"] = sam_outputs.low_res_masks
        current_out["pred_masks_high_res"] = sam_outputs.high_res_masks
        current_out["obj_ptr"] = sam_outputs.obj_ptr
        if not self.training:
            current_out["object_score_logits"] = sam_outputs.object_score_logits
        self._encode_memory_in_output(
            current_vision_feats,
            feat_sizes,
            point_inputs,
            run_mem_encoder,
            sam_outputs.high_res_masks,
            sam_outputs.object_score_logits,
            current_out,
            binarize_mask_from_pts,
        )
        return current_out
