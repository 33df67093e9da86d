"""Mask decoder of the SAM heads.

Learned output tokens (optional object-score token, IoU token, one token per mask) are prepended
to the prompt tokens and run through the two-way transformer together with the image embedding.
The image side is then upsampled 4× (optionally mixing in high-resolution backbone features) and
each mask token, passed through its own hypernetwork MLP, is dotted with every pixel to give that
mask's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d, activation_module, tensor_identity

__all__ = ["MaskDecoder"]


def _deconv_2x2(tokens: torch.Tensor, h: int, w: int, deconv: nn.ConvTranspose2d) -> torch.Tensor:
    """``deconv`` (kernel 2, stride 2) of an ``h×w`` grid given as ``B×hw×C_in`` tokens,
    returned channels last, ``B×2h×2w×C_out``."""
    c_out = deconv.out_channels
    # (C_in, C_out, 2, 2) -> rows ordered (i, j, C_out): one linear map per token
    weight = deconv.weight.permute(2, 3, 1, 0).reshape(4 * c_out, -1)
    bias = None if deconv.bias is None else deconv.bias.repeat(4)
    y = F.linear(tokens, weight, bias)  # B×hw×(2·2·C_out)
    b = y.shape[0]
    y = y.reshape(b, h, w, 2, 2, c_out).permute(0, 1, 3, 2, 4, 5)  # B×h×i×w×j×C_out
    return y.reshape(b, 2 * h, 2 * w, c_out)


class MaskDecoder(nn.Module):
    """Predict masks, IoU scores, output tokens and object-presence logits.

    Args:
        transformer_dim: channel width ``C`` of tokens and image embedding.
        transformer: the two-way transformer (``TwoWayTransformer``).
        num_multimask_outputs: masks returned in multimask mode (one more token is the
            single-mask token).
        activation: activation class (or name) of the upscaling path.
        iou_head_depth: layers of the IoU prediction MLP.
        iou_head_hidden_dim: hidden width of the IoU prediction MLP.
        use_high_res_features: add projected stride-4/stride-8 backbone features while upscaling
            (creates ``conv_s0``/``conv_s1``; the projection itself is applied by the caller).
        iou_prediction_use_sigmoid: squash IoU predictions to ``[0, 1]``.
        dynamic_multimask_via_stability: in single-mask mode at inference, fall back to the best
            multimask output when the single mask is unstable.
        dynamic_multimask_stability_delta: logit offset used for the stability score.
        dynamic_multimask_stability_thresh: minimum stability score of the single mask.
        pred_obj_scores: predict an object-presence logit from an extra token.
        pred_obj_scores_mlp: use a 3-layer MLP (instead of a linear layer) for that logit.
        use_multimask_token_for_obj_ptr: in multimask mode return the multimask tokens (rather
            than the single-mask token) as ``sam_tokens_out``.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] | str = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        super().__init__()
        self._image_side_cache: tuple[tuple, dict[str, torch.Tensor]] | None = None
        self._high_res_cache: tuple[tuple, list[torch.Tensor]] | None = None
        act = activation_module(activation)
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        # Two transposed convs, each doubling the resolution: C -> C/4 -> C/8 channels.
        c4, c8 = transformer_dim // 4, transformer_dim // 8
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, c4, kernel_size=2, stride=2),
            LayerNorm2d(c4),
            act(),
            nn.ConvTranspose2d(c4, c8, kernel_size=2, stride=2),
            act(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            # Projections of the stride-4 (s0) and stride-8 (s1) backbone levels.
            self.conv_s0 = nn.Conv2d(transformer_dim, c8, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, c4, kernel_size=1, stride=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, c8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head: nn.Module = (
                MLP(transformer_dim, transformer_dim, 1, 3)
                if pred_obj_scores_mlp
                else nn.Linear(transformer_dim, 1)
            )

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode masks for a batch of prompts.

        Args:
            image_embeddings: ``B×C×h×w`` image features (``1×C×h×w`` with ``repeat_image``).
            image_pe: ``1×C×h×w`` positional encoding (``PromptEncoder.get_dense_pe()``).
            sparse_prompt_embeddings: ``B×N×C`` prompt tokens.
            dense_prompt_embeddings: ``B×C×h×w`` mask-prompt embeddings.
            multimask_output: return the ``num_multimask_outputs`` masks instead of one.
            repeat_image: repeat each image embedding once per prompt batch entry.
            high_res_features: ``[feat_s0, feat_s1]`` of shapes ``B×C/8×4h×4w`` and
                ``B×C/4×2h×2w`` (already projected by ``conv_s0``/``conv_s1``); required when
                ``use_high_res_features``.

        Returns:
            ``(masks, iou_pred, sam_tokens_out, object_score_logits)``: mask logits
            ``B×M×4h×4w``, IoU predictions ``B×M`` (``M`` = 3 multimask or 1), output tokens
            ``B×T×C`` (``T`` = 3 for multimask with ``use_multimask_token_for_obj_ptr``, else 1)
            and object-presence logits ``B×1``.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=repeat_image,
            high_res_features=high_res_features,
        )

        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]

        # The object pointer is built from the single-mask token, except in multimask mode when
        # the model was trained to use the multimask tokens.
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]  # B×3×C
        else:
            sam_tokens_out = mask_tokens_out[:, 0:1]  # B×1×C
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks before selection; see :meth:`forward`.

        Returns masks ``B×K×4h×4w``, IoU ``B×K``, mask tokens ``B×K×C`` and object logits
        ``B×1`` with ``K = num_mask_tokens``.
        """
        learned = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            learned.insert(0, self.obj_score_token.weight)
        first = 1 if self.pred_obj_scores else 0  # index of the IoU token
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat(learned, dim=0)  # T×C
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)  # B×T×C
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)  # B×(T+N)×C

        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, num_prompts, dim=0)
        else:
            if image_embeddings.shape[0] != num_prompts:
                raise ValueError(
                    f"Got {image_embeddings.shape[0]} image embeddings for {num_prompts} prompt "
                    "sets; pass repeat_image=True to share one image."
                )
            src = image_embeddings
        src = src + dense_prompt_embeddings  # B×C×h×w
        if image_pe.shape[0] != 1:
            raise ValueError("image_pe must have batch size 1 (from PromptEncoder.get_dense_pe()).")
        pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape

        image_side = self._image_side(
            src, pos_src, (image_embeddings, dense_prompt_embeddings, image_pe, repeat_image)
        )
        hs, src = self.transformer(src, pos_src, tokens, image_side)  # B×(T+N)×C, B×hw×C
        iou_token_out = hs[:, first, :]  # B×C
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens, :]  # B×K×C

        if self.use_high_res_features and high_res_features is None:
            raise ValueError("This decoder needs high_res_features=[feat_s0, feat_s1].")
        upscaled = self._upscale(src, h, w, high_res_features)  # B×4h×4w×C/8

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # B×K×C/8
        b, uh, uw, c8 = upscaled.shape
        # B×16hw×C/8 @ B×C/8×K, then B×K×4h×4w (moving K-wide rows, not the C/8-wide image)
        masks = torch.matmul(upscaled.reshape(b, uh * uw, c8), hyper_in.transpose(1, 2))
        masks = masks.transpose(1, 2).reshape(b, -1, uh, uw)

        iou_pred = self.iou_prediction_head(iou_token_out)  # B×K
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])  # B×1
        else:
            # No presence head: report a confident "object present" logit (sigmoid(10) ≈ 1).
            object_score_logits = iou_pred.new_full((iou_pred.shape[0], 1), 10.0)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _image_side(
        self, src: torch.Tensor, pos_src: torch.Tensor, inputs: tuple
    ) -> dict[str, torch.Tensor] | None:
        """The transformer's first-block image projections for ``src`` (image embedding plus
        dense prompt embedding), reused while the same image is decoded again with the same
        dense embedding (clicks on an encoded image). ``None`` when gradients are needed."""
        if torch.is_grad_enabled() or self.training or not hasattr(
            self.transformer, "image_projections"
        ):
            return None
        device = src.device.type
        autocast = torch.is_autocast_enabled(device)
        weights = [p for layer in self.transformer.layers[:1] for p in layer.parameters()]
        key = (
            *(tensor_identity(x) if isinstance(x, torch.Tensor) else x for x in inputs),
            src.shape[0],
            tuple(tensor_identity(w) for w in weights),
            autocast,
            torch.get_autocast_dtype(device) if autocast else None,
        )
        cached = self._image_side_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        side = self.transformer.image_projections(src, pos_src)
        self._image_side_cache = (key, side)
        return side

    def _upscale(
        self, tokens: torch.Tensor, h: int, w: int, high_res: list[torch.Tensor] | None
    ) -> torch.Tensor:
        """The image tokens ``B×hw×C`` upscaled 4× to ``B×4h×4w×C/8``, channels last.

        Each 2×2, stride-2 transposed convolution is one matrix product of the tokens with
        the kernel laid out ``(2·2·C_out)×C_in`` followed by placing each token's four outputs
        on its 2×2 block; keeping channels last turns the channel layer norm into a plain
        layer norm and spares the transposes to and from ``B×C×H×W``."""
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        feat_s0 = feat_s1 = None
        if self.use_high_res_features:
            feat_s0, feat_s1 = self._channels_last(high_res)
        x = _deconv_2x2(tokens, h, w, deconv1)  # B×2h×2w×C/4
        if feat_s1 is not None:
            x = x + feat_s1
        x = act1(F.layer_norm(x, (x.shape[-1],), norm1.weight, norm1.bias, norm1.eps))
        x = _deconv_2x2(x.flatten(1, 2), 2 * h, 2 * w, deconv2)  # B×4h×4w×C/8
        if feat_s0 is not None:
            x = x + feat_s0
        return act2(x)

    def _channels_last(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[feat_s0, feat_s1]`` (``B×C×H×W``) as contiguous ``B×H×W×C``, in autocast's dtype
        when it is on (SAM 2's regime computes them in it); made once per image and kept
        while clicks decode the same image again."""
        device = feats[0].device.type
        dtype = feats[0].dtype
        if torch.is_autocast_enabled(device) and dtype == torch.float32:
            dtype = torch.get_autocast_dtype(device)
        if torch.is_grad_enabled() or self.training:
            return [f.permute(0, 2, 3, 1).to(dtype) for f in feats]
        key = (tuple(tensor_identity(f) for f in feats), dtype)
        cached = self._high_res_cache
        if cached is None or cached[0] != key:
            made = [f.permute(0, 2, 3, 1).to(dtype, memory_format=torch.contiguous_format)
                    for f in feats]
            cached = self._high_res_cache = (key, made)
        return cached[1]

    def _get_stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """Stability of ``...×H×W`` mask logits: area above ``+delta`` over area above ``-delta``.

        Returns ``...`` scores in ``[0, 1]`` (1 where nothing exceeds ``-delta``).
        """
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inner = (flat > delta).sum(dim=-1).float()
        outer = (flat > -delta).sum(dim=-1).float()
        return torch.where(outer > 0, inner / outer, torch.ones_like(inner))

    def _dynamic_multimask_via_stability(
        self, all_mask_logits: torch.Tensor, all_iou_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-mask output with a fallback for unstable masks.

        Takes ``B×K×H×W`` logits and ``B×K`` scores of all tokens. Where the single-mask output
        (token 0) has a stability score below the threshold, the multimask output (tokens 1…)
        with the highest predicted IoU is returned instead. Returns ``B×1×H×W`` and ``B×1``.
        """
        multi_logits = all_mask_logits[:, 1:]  # B×(K-1)×H×W
        multi_scores = all_iou_scores[:, 1:]  # B×(K-1)
        best = multi_scores.argmax(dim=-1)  # B
        rows = torch.arange(multi_scores.shape[0], device=all_iou_scores.device)
        best_logits = multi_logits[rows, best].unsqueeze(1)  # B×1×H×W
        best_scores = multi_scores[rows, best].unsqueeze(1)  # B×1

        single_logits = all_mask_logits[:, 0:1]  # B×1×H×W
        single_scores = all_iou_scores[:, 0:1]  # B×1
        stable = (
            self._get_stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh
        )
        # stable: B×1
        mask_out = torch.where(stable[..., None, None], single_logits, best_logits)
        score_out = torch.where(stable, single_scores, best_scores)
        return mask_out, score_out
