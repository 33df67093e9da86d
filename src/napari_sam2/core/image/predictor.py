"""Interactive segmentation of one image (or a batch of images) with SAM 2.

:class:`SAM2ImagePredictor` embeds an image once (:meth:`~SAM2ImagePredictor.set_image`) and
then turns prompts -- clicks, boxes, earlier mask logits -- into masks in milliseconds
(:meth:`~SAM2ImagePredictor.predict`). Its API, argument conventions and return shapes are
those of the ``SAM2ImagePredictor`` of SAM 2 (``sam2.sam2_image_predictor``), so scripts written
for it run unchanged; in addition

* bad prompts and images raise :class:`ValueError` naming the argument (see
  :mod:`napari_sam2.core.image.prompts`), and :meth:`predict` refuses a call without any prompt;
* ``set_image`` also takes grey ``H×W`` images and float images in ``[0, 1]``;
* hole filling / speck removal (``max_hole_area`` / ``max_sprinkle_area``) runs everywhere,
  CPU included, instead of being skipped without SAM 2's CUDA extension;
* any ``model.image_size`` works (feature sizes are read from the backbone);
* an image's features are kept in an embedding store on disk (``store=``, by default in the
  user cache), so setting the same image again, in this session or a later one, does not
  run the image encoder;
* :meth:`predict` after :meth:`set_image_batch` (and :meth:`predict_batch` after
  :meth:`set_image`) raise instead of silently using the last image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..stacks.model_input import check_image
from ..stacks.normalization import Normalization, normalize_image
from ..store.stack_store import StoreSpec, check_store_spec, open_image_store
from .embedding import ImageEmbedding, embed_images
from .prompts import Prompts
from .transforms import ImageTransforms

if TYPE_CHECKING:
    from ...models.sam2 import SAM2Base

__all__ = ["ImageEmbedding", "SAM2ImagePredictor"]

_OWN_STORE = object()  # set_image's default: the predictor's own store setting
_LOW_RES_CLAMP = 32.0  # returned low-res logits are clamped to ±32, as in SAM 2


class SAM2ImagePredictor:
    """Compute an image embedding once, then predict masks from prompts repeatedly.

    Args:
        sam_model: a :class:`~napari_sam2.models.sam2.SAM2Base` (e.g. from
            :func:`napari_sam2.models.checkpoints.load_model`), in eval mode.
        mask_threshold: logit above which a pixel belongs to the mask.
        max_hole_area: fill background holes of at most this many pixels of the
            low-resolution (``image_size / 4``) mask before upsampling; 0 disables.
        max_sprinkle_area: remove foreground specks of at most this many low-resolution
            pixels; 0 disables.
        store: where image features are kept on disk: ``None`` (default) one store per image
            in the user cache, ``False`` nowhere, a path for one store (then set only one
            image with this predictor).
    """

    def __init__(
        self,
        sam_model: SAM2Base,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        store: StoreSpec = None,
    ) -> None:
        if not math.isfinite(mask_threshold):
            raise ValueError(f"mask_threshold must be a finite number, got {mask_threshold}.")
        areas = {"max_hole_area": max_hole_area, "max_sprinkle_area": max_sprinkle_area}
        for name, value in areas.items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        check_store_spec(store)
        self.store = store
        self.model = sam_model
        self._transforms = ImageTransforms(
            sam_model.image_size, mask_threshold, max_hole_area, max_sprinkle_area
        )
        self.mask_threshold = float(mask_threshold)
        self._state: ImageEmbedding | None = None
        #: The intensity mapping applied by the last :meth:`set_image` (``None``: image used as is).
        self.normalization: Normalization | None = None

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
    ) -> SAM2ImagePredictor:
        """Load a model (official name such as ``"sam2.1_hiera_tiny"`` / Hugging Face id
        ``"facebook/sam2.1-hiera-tiny"``, or a checkpoint file) and wrap it in a predictor.

        ``config``, ``device``, ``image_size``, ``progress`` and ``precision`` go to
        :func:`napari_sam2.models.checkpoints.load_model`; other keyword arguments
        (``mask_threshold``, ``max_hole_area``, ``max_sprinkle_area``) to the predictor.
        """
        from ...models.checkpoints import load_model

        model = load_model(
            name_or_path, config=config, device=device, image_size=image_size, progress=progress,
            precision=precision,
        )
        return cls(model, **kwargs)

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.model.device

    @property
    def is_image_set(self) -> bool:
        """Whether an image (or batch) has been embedded."""
        return self._state is not None

    @property
    def embedding(self) -> ImageEmbedding | None:
        """The current :class:`ImageEmbedding`, or ``None``."""
        return self._state

    @property
    def orig_hw(self) -> list[tuple[int, int]] | None:
        """``(H, W)`` of each image set (one entry after :meth:`set_image`), or ``None``."""
        return None if self._state is None else list(self._state.orig_hw)

    # Read-only views with SAM 2's attribute names, used by mask generators and user code.
    @property
    def _is_image_set(self) -> bool:
        return self._state is not None

    @property
    def _is_batch(self) -> bool:
        return self._state is not None and self._state.is_batch

    @property
    def _orig_hw(self) -> list[tuple[int, int]] | None:
        return self.orig_hw

    @property
    def _features(self) -> dict[str, Any] | None:
        return None if self._state is None else self._state.as_dict()

    @property
    def mask_threshold(self) -> float:
        """Logit above which a pixel belongs to the mask."""
        return self._transforms.mask_threshold

    @mask_threshold.setter
    def mask_threshold(self, value: float) -> None:
        self._transforms.mask_threshold = float(value)

    def reset_predictor(self) -> None:
        """Forget the image embedding."""
        self._state = None

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def set_image(
        self, image: np.ndarray | Any, normalization: Normalization | None = None, *,
        store: StoreSpec = _OWN_STORE,
    ) -> None:
        """Embed one image for :meth:`predict`.

        Args:
            image: ``H×W×3`` RGB or ``H×W`` grey, ``uint8`` or float in ``[0, 1]`` (used as
                they are, as SAM 2 does), or a PIL image; any other microscopy image --
                16-bit, signed, float with any range or NaNs, 2–4 channels -- is first mapped
                with :func:`~napari_sam2.core.stacks.normalization.normalize_image` (robust
                percentile contrast per channel). At least 2×2 pixels.
            normalization: explicit intensity mapping (e.g. napari's contrast limits) applied
                whatever the dtype. The mapping used is kept in :attr:`normalization`.
            store: where this image's features are kept on disk (as the constructor's
                ``store``); default: the predictor's.
        """
        store = self.store if store is _OWN_STORE else store
        check_store_spec(store)
        image, self.normalization = _prepare_image(image, "image", normalization)
        self.reset_predictor()
        stores = [open_image_store(store, self.model, image, self.normalization)]
        self._state = embed_images(self.model, [image], is_batch=False, stores=stores)

    @torch.no_grad()
    def set_image_batch(
        self, image_list: Sequence[np.ndarray], normalization: Normalization | None = None
    ) -> None:
        """Embed several images (of any sizes) for :meth:`predict_batch`.

        Args:
            image_list: a list of images as accepted by :meth:`set_image`.
            normalization: as in :meth:`set_image`, resolved for each image separately.
        """
        if isinstance(image_list, np.ndarray) or not isinstance(image_list, Sequence):
            raise TypeError(
                "image_list must be a list of images (H×W×3 or H×W arrays), got "
                f"{type(image_list).__name__}."
            )
        if len(image_list) == 0:
            raise ValueError("image_list is empty.")
        prepared = [
            _prepare_image(im, f"image_list[{i}]", normalization) for i, im in enumerate(image_list)
        ]
        self.reset_predictor()
        self.normalization = prepared[0][1] if len(prepared) == 1 else None
        stores = [open_image_store(self.store, self.model, im, used) for im, used in prepared]
        self._state = embed_images(
            self.model, [im for im, _ in prepared], is_batch=True, stores=stores
        )

    def get_image_embedding(self) -> torch.Tensor:
        """The ``B×C×h×w`` image embedding (``B = 1`` after :meth:`set_image`)."""
        return self._require_image("get_image_embedding", batch=None).image_embed

    def _require_image(self, method: str, batch: bool | None) -> ImageEmbedding:
        if self._state is None:
            setter = "set_image_batch" if batch else "set_image"
            raise RuntimeError(f"No image is set: call .{setter}(...) before .{method}(...).")
        if batch is not None and self._state.is_batch != batch:
            setter, other = ("set_image", "predict_batch")
            if batch:
                setter, other = ("set_image_batch", "predict")
            raise RuntimeError(
                f".{method}(...) needs image(s) set with .{setter}(...); for the image(s) set now "
                f"use .{other}(...)."
            )
        return self._state

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks of the image set with :meth:`set_image` from prompts.

        Args:
            point_coords: ``N×2`` points, ``(x, y)`` pixels, or ``B×N×2`` for ``B`` objects.
            point_labels: ``N`` (or ``B×N``) labels: 1 foreground, 0 background, 2/3 box
                corners, -1 padding.
            box: ``4`` (or ``B×4``) XYXY box ``(x0, y0, x1, y1)`` in pixels.
            mask_input: ``1×h×w`` (or ``B×1×h×w``) low-resolution logits, typically
                ``low_res_masks`` of an earlier call (``h = w = image_size / 4``).
            multimask_output: return 3 candidate masks (good for a single ambiguous click)
                instead of 1.
            return_logits: return mask logits instead of 0/1 masks.
            normalize_coords: coordinates are pixels of the original image; with ``False``
                they are already normalised to ``[0, 1]``.

        Returns:
            ``(masks, iou_predictions, low_res_masks)`` as float32 numpy arrays: ``C×H×W``
            masks (0/1, or logits), ``C`` predicted IoUs and ``C×h×w`` low-resolution logits,
            ``C`` = 3 with ``multimask_output`` else 1; each gets a leading ``B`` axis when
            ``B > 1`` objects were prompted.

        Raises:
            RuntimeError: no image set with :meth:`set_image`.
            ValueError: no prompt at all, or a malformed or out-of-image prompt.
        """
        state = self._require_image("predict", batch=False)
        return self._predict_numpy(
            0, state, point_coords, point_labels, box, mask_input,
            multimask_output, return_logits, normalize_coords,
        )

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray | None] | None = None,
        point_labels_batch: Sequence[np.ndarray | None] | None = None,
        box_batch: Sequence[np.ndarray | None] | None = None,
        mask_input_batch: Sequence[np.ndarray | None] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for each image set with :meth:`set_image_batch`.

        Each ``*_batch`` argument is ``None`` or a list with one entry (possibly ``None``) per
        image, shaped as the matching :meth:`predict` argument.

        Returns:
            Three lists (masks, IoU predictions, low-res logits) with one entry per image,
            shaped as :meth:`predict`'s results.
        """
        state = self._require_image("predict_batch", batch=True)
        n = len(state.orig_hw)
        args = {
            "point_coords_batch": point_coords_batch,
            "point_labels_batch": point_labels_batch,
            "box_batch": box_batch,
            "mask_input_batch": mask_input_batch,
        }
        for name, value in args.items():
            if value is not None and (isinstance(value, (str, bytes)) or len(value) != n):
                raise ValueError(f"{name} must be a list with one entry per image ({n}).")
        results: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        for i in range(n):
            item = [None if v is None else v[i] for v in args.values()]
            try:
                out = self._predict_numpy(
                    i, state, *item, multimask_output, return_logits, normalize_coords
                )
            except ValueError as err:
                raise ValueError(f"image {i}: {err}") from None
            for collected, value in zip(results, out):
                collected.append(value)
        return results

    def _predict_numpy(
        self,
        img_idx: int,
        state: ImageEmbedding,
        point_coords: Any,
        point_labels: Any,
        box: Any,
        mask_input: Any,
        multimask_output: bool,
        return_logits: bool,
        normalize_coords: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate the prompts of image ``img_idx``, predict, return squeezed numpy arrays."""
        orig_hw = state.orig_hw[img_idx]
        prompts = Prompts.from_arrays(
            point_coords, point_labels, box, mask_input,
            image_hw=orig_hw,
            normalized=not normalize_coords,
            mask_hw=tuple(self.model.sam_prompt_encoder.mask_input_size),
        )
        coords, labels, boxes, masks_in = self._transforms.transform_prompts(
            prompts, orig_hw, self.device
        )
        masks, ious, low_res = self._predict(
            coords, labels, boxes, masks_in, multimask_output, True, img_idx
        )
        if not return_logits:  # 0./1. in place: numpy callers get float masks anyway
            masks = masks.gt_(self.mask_threshold)
        return tuple(  # type: ignore[return-value]
            t.squeeze(0).float().cpu().numpy() for t in (masks, ious, low_res)
        )

    @torch.no_grad()
    def _predict(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict from prompts already in model-input pixels (as SAM 2's ``_predict``).

        Args:
            point_coords: ``B×N×2`` (x, y) in model-input pixels (see
                ``self._transforms.transform_coords``), or ``None``.
            point_labels: ``B×N`` int labels, or ``None``.
            boxes: ``B×4`` (or ``B×2×2``) boxes in model-input pixels, or ``None``.
            mask_input: ``B×1×h×w`` low-resolution logits, or ``None``.
            multimask_output, return_logits: as in :meth:`predict`.
            img_idx: which image of a batch.

        Returns:
            ``(masks, iou_predictions, low_res_masks)`` tensors: ``B×C×H×W`` (bool, or float
            logits with ``return_logits``), ``B×C`` and ``B×C×h×w`` (clamped to ±32).
        """
        state = self._require_image("_predict", batch=None)
        points = None
        if point_coords is not None:
            points = (point_coords, point_labels)
        if boxes is not None:
            # Box corners go first, as points labelled 2 (top-left) and 3 (bottom-right).
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([2, 3], dtype=torch.int, device=boxes.device)
            corner_labels = corner_labels.expand(corners.shape[0], 2)
            if points is None:
                points = (corners, corner_labels)
            else:
                points = (
                    torch.cat([corners, points[0]], dim=1),
                    torch.cat([corner_labels, points[1].to(corner_labels.dtype)], dim=1),
                )
        sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        high_res = [f[img_idx].unsqueeze(0) for f in state.high_res_feats]
        low_res_masks, iou_predictions, _, _ = self.model.sam_mask_decoder(
            image_embeddings=state.image_embed[img_idx].unsqueeze(0),
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=sparse.shape[0] > 1,
            high_res_features=high_res,
        )
        masks = self._transforms.postprocess_masks(low_res_masks, state.orig_hw[img_idx])
        low_res_masks = torch.clamp(low_res_masks, -_LOW_RES_CLAMP, _LOW_RES_CLAMP)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions, low_res_masks


def _is_model_ready(image: np.ndarray) -> bool:
    """``uint8`` or finite float in ``[0, 1]``, ``H×W``, ``H×W×1`` or ``H×W×3``: used unchanged."""
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        return False
    if image.dtype == np.uint8:
        return True
    if image.dtype.kind != "f" or image.size == 0:
        return False
    return bool(np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0)


def _prepare_image(
    image: Any, name: str, normalization: Normalization | None
) -> tuple[np.ndarray, Normalization | None]:
    """Validated model-ready image and the intensity mapping applied to it (if any)."""
    if type(image).__module__.split(".")[0] == "PIL":
        image = np.asarray(image)
    if isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.dtype.kind in "uifb":
        if normalization is not None or not _is_model_ready(image):
            try:
                mapped, used = normalize_image(image, normalization)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            return check_image(mapped, name), used
    return check_image(image, name), None
