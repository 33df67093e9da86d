"""Memory writing of SAM 2: encode a frame's features plus its predicted mask into a memory.

:class:`MemoryWritingMixin` is mixed into :class:`~napari_sam2.models.sam2.SAM2Base`.

Note on dtypes: like the reference ``SAM2Base``, :meth:`_encode_new_memory` returns memories in
the compute dtype. The reference *video predictor* then stores ``maskmem_features`` as bfloat16
to save memory; :meth:`_prepare_memory_conditioned_features` accepts such stored memories and
casts them back to the compute dtype.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MemoryWritingMixin"]

# Logit to which overlapping (non-winning) object scores are clamped: sigmoid(-10) ≈ 4.5e-5.
_SUPPRESSED_LOGIT = -10.0


class MemoryWritingMixin(nn.Module):
    """``_encode_new_memory`` and ``_apply_non_overlapping_constraints`` for ``SAM2Base``."""

    hidden_dim: int
    memory_encoder: nn.Module
    non_overlap_masks_for_mem_enc: bool
    binarize_mask_from_pts_for_mem_enc: bool
    sigmoid_scale_for_mem_enc: float
    sigmoid_bias_for_mem_enc: float
    no_obj_embed_spatial: nn.Parameter | None

    def _apply_non_overlapping_constraints(self, pred_masks: torch.Tensor) -> torch.Tensor:
        """Keep, at each pixel, only the highest-scoring object.

        Args:
            pred_masks: ``N×1×H×W`` mask logits of the ``N`` objects of one frame.

        Returns:
            ``N×1×H×W`` logits where every object but the per-pixel winner is clamped to at most
            -10 (returned unchanged for a single object).
        """
        n = pred_masks.size(0)
        if n == 1:
            return pred_masks
        winner = torch.argmax(pred_masks, dim=0, keepdim=True)  # 1×1×H×W
        obj_ids = torch.arange(n, device=pred_masks.device)[:, None, None, None]  # N×1×1×1
        keep = winner == obj_ids  # N×1×H×W
        return torch.where(keep, pred_masks, torch.clamp(pred_masks, max=_SUPPRESSED_LOGIT))

    def _encode_new_memory(
        self,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        pred_masks_high_res: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
        binarize_mask_from_pts: bool | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the frame features and a predicted mask into a spatial memory.

        Args:
            current_vision_feats: list whose last entry is the ``hw×B×C`` frame features.
            feat_sizes: matching ``(h, w)`` sizes.
            pred_masks_high_res: ``B×1×S×S`` mask logits at the model's input size.
            object_score_logits: ``B×1`` object-presence logits.
            is_mask_from_pts: the mask came from clicks (binarised in eval mode when
                ``binarize_mask_from_pts``).
            binarize_mask_from_pts: ``None`` reads ``binarize_mask_from_pts_for_mem_enc``.

        Returns:
            ``(maskmem_features, maskmem_pos_enc)``: a ``B×C_mem×h×w`` memory and a list holding
            its ``B×C_mem×h×w`` position encoding.
        """
        feats = current_vision_feats[-1]  # hw×B×C
        B, C = feats.size(1), self.hidden_dim
        H, W = feat_sizes[-1]
        pix_feat = feats.permute(1, 2, 0).view(B, C, H, W)
        masks = pred_masks_high_res
        if self.non_overlap_masks_for_mem_enc and not self.training:
            masks = self._apply_non_overlapping_constraints(masks)
        if binarize_mask_from_pts is None:
            binarize_mask_from_pts = self.binarize_mask_from_pts_for_mem_enc
        if binarize_mask_from_pts and is_mask_from_pts and not self.training:
            mask_for_mem = (masks > 0).float()  # exactly what the user saw
        else:
            mask_for_mem = torch.sigmoid(masks)
        if self.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * self.sigmoid_scale_for_mem_enc
        if self.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + self.sigmoid_bias_for_mem_enc

        # The sigmoid (plus scale and bias) has been applied above.
        out = self.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
        maskmem_features = out["vision_features"]  # B×C_mem×h×w
        maskmem_pos_enc = out["vision_pos_enc"]  # [B×C_mem×h×w]
        if self.no_obj_embed_spatial is not None:
            # Mark memories of frames where the object is predicted absent (occluded).
            absent = 1.0 - (object_score_logits > 0).float()  # B×1
            embed = self.no_obj_embed_spatial[..., None, None]  # 1×C_mem×1×1
            maskmem_features = maskmem_features + absent[..., None, None] * embed
        return maskmem_features, maskmem_pos_enc
