"""Python API for scripts and notebooks: one function per task.

* :func:`segment_image` -- one object in one 2D image from clicks and/or a box -> ``H×W`` bool mask;
* :func:`segment_everything` -- every object in one 2D image -> ``H×W`` label image;
* :func:`track` -- objects prompted on some frames of a time-lapse or z-stack, followed through
  every frame -> ``T×H×W`` label volume.

Conventions
-----------
* Points are SAM's ``N×2`` ``(x, y)`` pixels (column first), boxes XYXY ``(x0, y0, x1, y1)``.
  Coordinates taken from napari layers are ``(…, y, x)``: turn them into prompts with
  :mod:`napari_sam2.core.annotations` (``prompts_from_points``, ``prompts_from_boxes``).
* Images may be 8-bit RGB/grey, 16-bit, float, multichannel: other than ``uint8`` and floats in
  ``[0, 1]`` they are contrast-stretched (0.5-99.5 percentiles per channel) before SAM sees
  them; pass ``normalization=`` (:class:`napari_sam2.core.stacks.normalization.Normalization`) to
  choose the mapping, e.g. ``Normalization(mode="limits", contrast_limits=(100, 3000))``.
* ``model`` is an official name (``"sam2.1_hiera_tiny"`` … ``"sam2_hiera_large"``; the first
  use downloads it into the cache, see :func:`napari_sam2.models.checkpoints.load_model`), a
  checkpoint file, or an already built network (:func:`~napari_sam2.models.checkpoints.load_model`
  result) or predictor. Loading takes seconds, so in a loop load once and pass the object::

      from napari_sam2 import load_model, track
      model = load_model("sam2.1_hiera_tiny", video=True)
      for path in paths:
          labels = track(path, prompts[path], model=model)

  With an object, ``device``, ``config`` and ``image_size`` are ignored: it runs where it is.
* ``precision``: ``"auto"`` (default for a loaded model: bfloat16 on CUDA and on CPUs with
  bfloat16 units, which SAM 2 itself runs in, float32 elsewhere; decided by measurement),
  ``"fp32"`` (strict, the reference's numbers), ``"fast"`` (float32 results, bfloat16 units
  where the CPU keeps float32 accuracy) or ``"bf16"``; see :mod:`napari_sam2.models.precision`.
  Given with a network or predictor, it changes that network's mode; ``None`` leaves it as
  it is.
* ``store``: where image features are kept on disk, so that the same image or stack is not
  encoded again, in this session or a later one (see :mod:`napari_sam2.core.store`):
  ``None`` (default) the user cache (``$NAPARI_SAM2_CACHE/embeddings``, 20 GB, least recently
  used removed first), ``False`` nowhere, or a path (a ``.zarr`` folder, e.g. next to the
  data or on a shared drive; ``napari-sam2 embed`` precomputes one). With a predictor given
  as ``model``, ``None`` means the predictor's own setting.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.annotations import (
    FramePrompt,
    merge_prompts,
    prompts_from_dict,
    validate_prompts,
)
from .core.annotations.labels import label_dtype, masks_to_labels

if TYPE_CHECKING:
    import torch

    from .core.image.predictor import SAM2ImagePredictor
    from .core.stacks.normalization import Normalization
    from .core.video.predictor import SAM2VideoPredictor
    from .models.sam2 import SAM2Base

__all__ = ["DEFAULT_MODEL", "segment_everything", "segment_image", "track"]

DEFAULT_MODEL = "sam2.1_hiera_tiny"
_DIRECTIONS = ("forward", "backward", "both")


# ---------------------------------------------------------------------------------------------
def _load(
    model: Any, config: Any, device: Any, image_size: int | None, video: bool,
    precision: str | None = None,
) -> SAM2Base:
    """The network behind ``model`` (name, path, network or predictor), in ``precision``."""
    from .models.precision import set_precision
    from .models.sam2 import SAM2Base

    net = None
    if isinstance(model, SAM2Base):
        net = model
    elif isinstance(getattr(model, "model", None), SAM2Base):  # image / video predictor
        net = model.model
    elif isinstance(getattr(getattr(model, "predictor", None), "model", None), SAM2Base):
        net = model.predictor.model  # automatic mask generator
    if net is not None:
        return net if precision is None else set_precision(net, precision)
    if isinstance(model, (str, os.PathLike)):
        from .models.checkpoints import load_model

        return load_model(
            model, config=config, device=device, image_size=image_size, video=video,
            precision="auto" if precision is None else precision,
        )
    raise TypeError(
        "model must be an official model name, a checkpoint path, a network from load_model() "
        f"or a predictor; got {type(model).__name__}"
    )


def _remove_stale() -> None:
    from .core.scratch import remove_stale

    remove_stale()  # once per process: what a killed run of ours left behind


def _image_predictor(
    model: Any, config: Any, device: Any, image_size: Any, precision: str | None
) -> SAM2ImagePredictor:
    _remove_stale()
    from .core.image.predictor import SAM2ImagePredictor

    net = _load(model, config, device, image_size, video=False, precision=precision)
    return model if isinstance(model, SAM2ImagePredictor) else SAM2ImagePredictor(net)


def _video_predictor(
    model: Any, config: Any, device: Any, image_size: Any, precision: str | None
) -> SAM2VideoPredictor:
    _remove_stale()
    from .core.video.predictor import SAM2VideoPredictor

    net = _load(model, config, device, image_size, video=True, precision=precision)
    return model if isinstance(model, SAM2VideoPredictor) else SAM2VideoPredictor(net)


# ---------------------------------------------------------------------------------------------
def segment_image(
    image: Any,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    *,
    model: Any = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    config: str | os.PathLike | None = None,
    image_size: int | None = None,
    precision: str | None = None,
    multimask: bool = False,
    normalization: Normalization | None = None,
    store: Any = None,
) -> np.ndarray:
    """Segment one object in one 2D image.

    Args:
        image: ``H×W`` grey, ``H×W×3`` RGB, or any 2D microscopy image (16-bit, float,
            ``H×W×C`` / ``C×H×W`` multichannel; see the module docstring).
        points: ``N×2`` clicks, ``(x, y)`` pixels (SAM's order, not napari's ``(y, x)``).
        labels: ``N`` point labels, 1 foreground / 0 background; default all 1.
        box: ``4`` XYXY box ``(x0, y0, x1, y1)`` in pixels.
        model, device, config, image_size, precision: see the module docstring. A
            :class:`~napari_sam2.core.image.predictor.SAM2ImagePredictor` is used as it is
            (with its own thresholds).
        multimask: let SAM propose 3 masks and return the one with the highest predicted IoU
            (often better for a single ambiguous click); default one mask.
        normalization: intensity mapping; default automatic.
        store: see the module docstring.

    Returns:
        ``H×W`` bool mask.
    """
    if points is None and box is None:
        raise ValueError("segment_image needs points and/or a box")
    if points is not None and labels is None:
        labels = np.ones(len(np.asarray(points)), dtype=np.int32)
    from .core.image.predictor import SAM2ImagePredictor

    predictor = _image_predictor(model, config, device, image_size, precision)
    if store is None and isinstance(model, SAM2ImagePredictor):
        predictor.set_image(image, normalization=normalization)
    else:
        predictor.set_image(image, normalization=normalization, store=store)
    masks, scores, _ = predictor.predict(
        point_coords=points, point_labels=labels, box=box, multimask_output=multimask
    )
    return np.asarray(masks[int(np.argmax(scores))], dtype=bool)


def segment_everything(
    image: Any,
    *,
    model: Any = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    config: str | os.PathLike | None = None,
    image_size: int | None = None,
    precision: str | None = None,
    normalization: Normalization | None = None,
    store: Any = None,
    **amg_options: Any,
) -> np.ndarray:
    """Segment everything in one 2D image with the automatic mask generator.

    Args:
        image: as in :func:`segment_image`.
        model, device, config, image_size, precision: see the module docstring; a
            :class:`~napari_sam2.core.image.mask_generator.SAM2AutomaticMaskGenerator` is
            used as it is (then pass no ``amg_options``).
        normalization: intensity mapping; default automatic.
        store: see the module docstring (a generator given as ``model`` uses its own).
        amg_options: options of the generator, e.g. ``points_per_side=32``,
            ``pred_iou_thresh=0.8``, ``stability_score_thresh=0.95``,
            ``min_mask_region_area=0``.

    Returns:
        ``H×W`` ``uint16`` label image (``uint32`` above 65535 masks): 0 background, label 1
        the largest mask, smaller masks painted over larger ones (see
        :func:`napari_sam2.core.annotations.labels.masks_to_labels`).
    """
    from .core.image.mask_generator import SAM2AutomaticMaskGenerator
    from .core.stacks.normalization import normalize_image

    if isinstance(model, SAM2AutomaticMaskGenerator):
        if amg_options or store is not None:
            raise ValueError("pass amg_options and store to the generator you built, not here")
        generator = model
    else:
        net = _load(model, config, device, image_size, video=False, precision=precision)
        generator = SAM2AutomaticMaskGenerator(net, store=store, **amg_options)
    if normalization is not None:
        image, _ = normalize_image(image, normalization)
    records = generator.generate(image)
    if generator.output_mode != "binary_mask" or not records:
        shape = _image_hw(image)
    else:
        shape = records[0]["segmentation"].shape
    return masks_to_labels(records, shape=shape)


def _image_hw(image: Any) -> tuple[int, int]:
    from .core.stacks.normalization import normalize_image

    array = np.asarray(image)
    if array.ndim == 2:
        return array.shape
    return normalize_image(array)[0].shape[:2]


# ---------------------------------------------------------------------------------------------
def _as_prompts(prompts: Any) -> list[FramePrompt]:
    if isinstance(prompts, FramePrompt):
        return [prompts]
    if isinstance(prompts, Mapping):
        return prompts_from_dict(prompts)
    if isinstance(prompts, Sequence) and all(isinstance(p, FramePrompt) for p in prompts):
        return merge_prompts(prompts)
    raise TypeError(
        "prompts must be a list of FramePrompt (see napari_sam2.core.annotations) "
        "or a dict "
        "{(frame_idx, obj_id): {'points': N×2 (x, y), 'labels': N, 'box': XYXY}}"
    )


def labels_from_logits(
    obj_ids: Sequence[int], logits: Any, out: np.ndarray | None = None, threshold: float = 0.0
) -> np.ndarray:
    """One ``H×W`` label image from per-object mask logits (``K×1×H×W`` or ``K×H×W``).

    A pixel gets the id of the object with the highest logit there, if that logit is above
    ``threshold``; otherwise 0. ``out`` (``H×W``, an integer dtype) is filled if given.
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 4:
        logits = logits[:, 0]
    ids = np.asarray(list(obj_ids), dtype=np.int64)
    if logits.ndim != 3 or len(ids) != logits.shape[0]:
        raise ValueError(f"expected one K×H×W logit map per object id, got {logits.shape}")
    shape = logits.shape[1:]
    if out is None:
        out = np.zeros(shape, dtype=label_dtype(int(ids.max(initial=0))))
    if len(ids) == 0:
        out[...] = 0
        return out
    best = np.argmax(logits, axis=0)
    top = np.take_along_axis(logits, best[None], axis=0)[0]
    out[...] = np.where(top > threshold, ids[best], 0).astype(out.dtype, copy=False)
    return out


def track(
    stack: Any,
    prompts: Sequence[FramePrompt] | Mapping[tuple[int, int], Mapping[str, Any]],
    *,
    model: Any = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    config: str | os.PathLike | None = None,
    image_size: int | None = None,
    precision: str | None = None,
    direction: str = "both",
    frame_range: tuple[int, int] | None = None,
    normalization: Normalization | None = None,
    out: np.ndarray | None = None,
    progress: bool = False,
    store: Any = None,
    on_frame: Callable[[int], None] | None = None,
    **frame_kwargs: Any,
) -> np.ndarray:
    """Follow prompted objects through every frame of a stack; return the label volume.

    Args:
        stack: ``T×H×W`` (or ``Z×H×W``) array-like -- numpy, ``np.memmap``, dask, zarr, a
            napari layer's ``.data`` -- or a path (TIFF, folder of images, ``.zarr``), or a
            :class:`~napari_sam2.core.stacks.source.FrameSource`. Frames are read one at a
            time, never the whole stack. Multichannel and higher-dimensional stacks: pass
            ``frame_axis``, ``channel_axis``, ``position`` (see
            :func:`~napari_sam2.core.stacks.source.open_frames`).
        prompts: a list of :class:`~napari_sam2.core.annotations.FramePrompt` (e.g. from
            ``prompts_from_points``), or a dict ``{(frame_idx, obj_id): {"points": N×2 (x, y),
            "labels": N (1/0, default 1), "box": XYXY}}``. Object ids are the label values
            (>= 1). Checked against the stack: a point outside it raises :class:`ValueError`.
        model, device, config, image_size, precision: see the module docstring; a
            :class:`~napari_sam2.core.video.predictor.SAM2VideoPredictor` is used as it is.
        direction: ``"forward"`` (towards later frames), ``"backward"`` or ``"both"``.
        frame_range: ``(first, last)`` frames (inclusive) to track within; default all.
        normalization: intensity mapping for every frame (default: contrast limits from a
            sample of frames, the same for all).
        out: ``T×H×W`` integer array to write into (e.g. ``np.memmap`` or
            ``tifffile.memmap``), so the result need not fit in RAM; allocated otherwise.
        progress: show a tqdm progress bar on stderr.
        store: see the module docstring; a stack encoded before (or precomputed with
            ``napari-sam2 embed``) is not encoded again.
        on_frame: called with a frame's index once its labels are final in ``out`` (e.g. to
            save progress); a frame the propagation visits twice (the prompted frame of a
            ``"both"`` run) is reported each time.
        frame_kwargs: passed to ``init_state`` / ``open_frames`` (``frame_axis``,
            ``channel_axis``, ``position``, ``contrast_limits``, ...).

    Returns:
        ``out``: ``T×H×W`` labels, ``uint16`` (``uint32`` for object ids above 65535) when
        allocated here; each pixel holds the id of the object with the highest mask logit,
        0 where no object's logit is positive and on frames that were not tracked.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(_DIRECTIONS)}, got {direction!r}")
    prompt_list = _as_prompts(prompts)
    if not prompt_list:
        raise ValueError("track needs at least one prompt")
    predictor = _video_predictor(model, config, device, image_size, precision)
    if normalization is not None:
        frame_kwargs["normalization"] = normalization
    if store is not None or not _is_video_predictor(model):
        frame_kwargs["store"] = store
    state = predictor.init_state(stack, **frame_kwargs)
    try:
        num_frames = int(state.num_frames)
        height, width = int(state.video_height), int(state.video_width)
        prompt_list = validate_prompts(prompt_list, num_frames, height, width)
        max_id = max(p.obj_id for p in prompt_list)
        out = _output(out, (num_frames, height, width), max_id)
        for p in prompt_list:
            predictor.add_new_points_or_box(
                state, p.frame_idx, p.obj_id, points=p.points, labels=p.labels, box=p.box
            )
        written = np.zeros(num_frames, dtype=bool)
        with _progress_bar(progress, _expected_steps(prompt_list, num_frames, direction,
                                                     frame_range)) as bar:
            for frame_idx, obj_ids, masks in predictor.propagate(
                state, direction=direction, frame_range=frame_range
            ):
                labels_from_logits(obj_ids, masks, out=out[frame_idx])
                written[frame_idx] = True
                if on_frame is not None:
                    on_frame(int(frame_idx))
                bar.update(1)
        for frame_idx in np.flatnonzero(~written):
            out[frame_idx] = 0
            if on_frame is not None:
                on_frame(int(frame_idx))
        return out
    finally:
        _close_state(predictor, state)


def _is_video_predictor(model: Any) -> bool:
    from .core.video.predictor import SAM2VideoPredictor

    return isinstance(model, SAM2VideoPredictor)


def _output(out: np.ndarray | None, shape: tuple[int, int, int], max_id: int) -> np.ndarray:
    if out is None:
        return np.zeros(shape, dtype=label_dtype(max_id))
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, the labels need {shape}")
    dtype = np.dtype(out.dtype)
    if dtype.kind not in "iu" or np.iinfo(dtype).max < max_id:
        raise ValueError(f"out has dtype {dtype}, which cannot hold object id {max_id}")
    return out


def _expected_steps(
    prompts: list[FramePrompt], num_frames: int, direction: str, frame_range: Any
) -> int:
    """Items :meth:`SAM2VideoPredictor.propagate` yields (the progress bar's total)."""
    first, last = (0, num_frames - 1) if frame_range is None else map(int, frame_range)
    prompted = [p.frame_idx for p in prompts if first <= p.frame_idx <= last]
    if not prompted:
        return 1
    start = max(prompted) if direction == "backward" else min(prompted)
    steps = 0
    if direction in ("forward", "both"):
        steps += last - start + 1
    if direction in ("backward", "both"):
        steps += start - first + 1
    return steps


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Any]:
    if not enabled:
        yield _NoBar()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="tracking", unit="frame", leave=True)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _close_state(predictor: Any, state: Any) -> None:
    close = getattr(state, "close", None)
    if callable(close):
        close()
    else:
        predictor.reset_state(state)
