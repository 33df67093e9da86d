"""SAM-style heads of SAM 2: the prompt encoder plus mask decoder run on one frame's features.

:class:`SamHeadsMixin` is mixed into :class:`~napari_sam2.models.sam2.SAM2Base`; it relies on the
attributes that class sets up (``hidden_dim``, ``image_size``, ``backbone_stride``, the
``pred_obj_scores`` / ``*_no_obj_ptr`` flags, ...). Besides building the heads it turns the
decoder's output token into an *object pointer*, the per-frame summary vector that memory
attention later attends to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

__all__ = ["NO_OBJ_SCORE", "SamHeadOutputs", "SamHeadsMixin"]

# Mask logit written where the object-score head says the object is absent.
NO_OBJ_SCORE = -1024.0

# Logits used when a binary mask is taken as the prediction: sigmoid(±10) ≈ 1 - 4.5e-5 / 4.5e-5.
_MASK_AS_LOGIT_SCALE = 20.0
_MASK_AS_LOGIT_BIAS = -10.0


class SamHeadOutputs(NamedTuple):
    """What the SAM heads return for a batch of ``B`` objects (a tuple, unpackable as such).

    ``M`` is 3 with multimask output, else 1; ``h×w`` is the image-embedding grid and
    ``S = image_size``.
    """

    low_res_multimasks: torch.Tensor  # B×M×4h×4w mask logits (float32)
    high_res_multimasks: torch.Tensor  # B×M×S×S mask logits, bilinearly upsampled
    ious: torch.Tensor  # B×M predicted IoU of each mask
    low_res_masks: torch.Tensor  # B×1×4h×4w best mask (highest predicted IoU)
    high_res_masks: torch.Tensor  # B×1×S×S best mask
    obj_ptr: torch.Tensor  # B×C object pointer
    object_score_logits: torch.Tensor  # B×1 object-presence logit (> 0: object visible)


class SamHeadsMixin(nn.Module):
    """Construction and use of ``sam_prompt_encoder``, ``sam_mask_decoder`` and ``obj_ptr_proj``."""

    # Set by SAM2Base before _build_sam_heads() is called.
    hidden_dim: int
    mem_dim: int
    image_size: int
    backbone_stride: int
    use_high_res_features_in_sam: bool
    iou_prediction_use_sigmoid: bool
    pred_obj_scores: bool
    pred_obj_scores_mlp: bool
    use_multimask_token_for_obj_ptr: bool
    use_obj_ptrs_in_encoder: bool
    use_mlp_for_obj_ptr_proj: bool
    multimask_output_in_sam: bool
    multimask_output_for_tracking: bool
    multimask_min_pt_num: int
    multimask_max_pt_num: int
    proj_tpos_enc_in_obj_ptrs: bool
    fixed_no_obj_ptr: bool
    soft_no_obj_ptr: bool
    sam_mask_decoder_extra_args: dict[str, Any] | None

    def _build_sam_heads(self) -> None:
        """Create the prompt encoder, mask decoder, object-pointer and pointer-position layers."""
        self.sam_prompt_embed_dim = self.hidden_dim
        self.sam_image_embedding_size = self.image_size // self.backbone_stride
        grid = self.sam_image_embedding_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.sam_prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=self.sam_prompt_embed_dim, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=self.sam_prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
            pred_obj_scores=self.pred_obj_scores,
            pred_obj_scores_mlp=self.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
            **dict(self.sam_mask_decoder_extra_args or {}),
        )
        # Object pointer: a projection of the decoder's output token (identity when unused).
        self.obj_ptr_proj: nn.Module = nn.Identity()
        if self.use_obj_ptrs_in_encoder:
            if self.use_mlp_for_obj_ptr_proj:
                self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
            else:
                self.obj_ptr_proj = nn.Linear(self.hidden_dim, self.hidden_dim)
        # Separate projection of the pointers' temporal encoding (C -> mem_dim).
        self.obj_ptr_tpos_proj: nn.Module = nn.Identity()
        if self.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)

    def _mix_in_no_obj_ptr(
        self, obj_ptr: torch.Tensor, presence: torch.Tensor
    ) -> torch.Tensor:
        """Blend ``obj_ptr`` (B×C) with the learned ``no_obj_ptr`` by ``presence`` (B×1, 0..1)."""
        if not (self.pred_obj_scores and self.use_obj_ptrs_in_encoder):
            # The reference fails here (no ``no_obj_ptr`` exists); we keep the plain pointer.
            return obj_ptr
        if self.fixed_no_obj_ptr:
            obj_ptr = presence * obj_ptr
        return obj_ptr + (1 - presence) * self.no_obj_ptr

    def _use_multimask(
        self, is_init_cond_frame: bool, point_inputs: Mapping[str, torch.Tensor] | None
    ) -> bool:
        """Whether the SAM heads should predict 3 masks for these clicks."""
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
        return bool(
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and self.multimask_min_pt_num <= num_pts <= self.multimask_max_pt_num
        )

    def _forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
    ) -> SamHeadOutputs:
        """Run prompt encoder and mask decoder on (memory-conditioned) frame features.

        Args:
            backbone_features: ``B×C×h×w`` features, ``h = w = image_size // backbone_stride``.
            point_inputs: ``{"point_coords": B×P×2 float (x, y) pixels in the model's input
                frame, "point_labels": B×P int32}`` (1 positive, 0 negative, 2/3 box corners,
                -1 padding); ``None`` for no clicks.
            mask_inputs: ``B×1×H'×W'`` mask (logits, probabilities or bool); resized with
                antialiasing to ``4h×4w`` when needed and used as a dense prompt.
            high_res_features: ``[B×C/8×4h×4w, B×C/4×2h×2w]`` projected features (from
                :meth:`forward_image`) when ``use_high_res_features_in_sam``, else ``None``.
            multimask_output: predict 3 masks and keep the one with highest predicted IoU.

        Returns:
            :class:`SamHeadOutputs` (a 7-tuple, same order as the reference).
        """
        B = backbone_features.size(0)
        device = backbone_features.device
        grid = self.sam_image_embedding_size
        expected = (self.sam_prompt_embed_dim, grid, grid)
        if tuple(backbone_features.shape[1:]) != expected:
            raise ValueError(
                f"backbone_features must be B×{expected[0]}×{grid}×{grid} for image_size "
                f"{self.image_size}, got {tuple(backbone_features.shape)}."
            )

        if point_inputs is not None:
            coords = point_inputs["point_coords"]  # B×P×2
            labels = point_inputs["point_labels"]  # B×P
            if coords.size(0) != B or labels.size(0) != B:
                raise ValueError(f"Point inputs have batch {coords.size(0)}, features {B}.")
        else:
            # A single padding point (label -1) stands for "no clicks".
            coords = torch.zeros(B, 1, 2, device=device)
            labels = -torch.ones(B, 1, dtype=torch.int32, device=device)

        mask_prompt = None
        if mask_inputs is not None:
            if mask_inputs.dim() != 4 or tuple(mask_inputs.shape[:2]) != (B, 1):
                raise ValueError(f"mask_inputs must be B×1×H×W, got {tuple(mask_inputs.shape)}.")
            mask_size = tuple(self.sam_prompt_encoder.mask_input_size)
            if tuple(mask_inputs.shape[-2:]) != mask_size:
                mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=mask_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )  # B×1×4h×4w
            else:
                mask_prompt = mask_inputs

        sparse, dense = self.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=mask_prompt
        )
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,  # one feature map per object already
            high_res_features=high_res_features,
        )  # B×M×4h×4w, B×M, B×T×C, B×1

        is_obj_appearing = object_score_logits > 0  # B×1
        if self.pred_obj_scores:
            # Masks of absent objects become a hard "nothing here".
            low_res_multimasks = torch.where(
                is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE
            )
        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )  # B×M×S×S

        sam_output_token = sam_output_tokens[:, 0]  # B×C
        if multimask_output:
            best = torch.argmax(ious, dim=-1)  # B
            rows = torch.arange(B, device=device)
            low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)  # B×1×4h×4w
            high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)  # B×1×S×S
            if sam_output_tokens.size(1) > 1:
                sam_output_token = sam_output_tokens[rows, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

        obj_ptr = self.obj_ptr_proj(sam_output_token)  # B×C
        if self.pred_obj_scores:
            # Unlike the masks, the pointer may mix in "no object" softly.
            presence = (
                object_score_logits.sigmoid()
                if self.soft_no_obj_ptr
                else is_obj_appearing.float()
            )
            obj_ptr = self._mix_in_no_obj_ptr(obj_ptr, presence)

        return SamHeadOutputs(
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    def _use_mask_as_output(
        self,
        backbone_features: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
        mask_inputs: torch.Tensor,
    ) -> SamHeadOutputs:
        """Take a given binary mask as the prediction (same outputs as :meth:`_forward_sam_heads`).

        Args:
            backbone_features: ``B×C×h×w`` frame features (used only for the object pointer).
            high_res_features: as in :meth:`_forward_sam_heads`.
            mask_inputs: ``B×1×S×S`` binary (bool or 0/1 float) masks at the model's input size.

        The mask becomes ±10 logits; the low-res version is an antialiased 4× downsample, the IoU
        is a dummy 1, and the object score is +10 (non-empty mask) or -10 (empty mask). The
        object pointer comes from the SAM heads prompted with the downsampled mask.
        """
        mask_float = mask_inputs.float()
        high_res_masks = mask_float * _MASK_AS_LOGIT_SCALE + _MASK_AS_LOGIT_BIAS  # B×1×S×S
        low_res_masks = F.interpolate(
            high_res_masks,
            size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )  # B×1×S/4×S/4
        B = mask_inputs.size(0)
        ious = mask_inputs.new_ones(B, 1).float()
        if self.use_obj_ptrs_in_encoder:
            obj_ptr = self._forward_sam_heads(
                backbone_features=backbone_features,
                mask_inputs=self.mask_downsample(mask_float),
                high_res_features=high_res_features,
            ).obj_ptr
        else:
            obj_ptr = torch.zeros(B, self.hidden_dim, device=mask_inputs.device)

        # Presence is decided by the mask itself, not by the object-score head.
        presence = torch.any(mask_float.flatten(1) > 0.0, dim=1)[:, None].float()  # B×1
        object_score_logits = _MASK_AS_LOGIT_SCALE * presence + _MASK_AS_LOGIT_BIAS
        if self.pred_obj_scores:
            obj_ptr = self._mix_in_no_obj_ptr(obj_ptr, presence)

        return SamHeadOutputs(
            low_res_masks,
            high_res_masks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )
