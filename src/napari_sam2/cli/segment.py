"""``napari-sam2 segment``: segment one 2D image, everything or the prompted objects, into a
label TIFF."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_OK, UsageError, add_common_options, say
from .inputs import existing_file, input_errors, read_image, read_prompts
from .model_options import add_model_options, check_model, load_model
from .output import AtomicOutput, write_tiff
from .store_options import add_store_options, store_errors, store_spec

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``segment`` command to the subcommands ``sub``."""
    p = sub.add_parser(
        "segment", help="segment one 2D image -> label TIFF",
        description="Segment everything in IMAGE (--auto) or the objects prompted in a Points / "
                    "Shapes CSV; write an H×W label TIFF (uint16, ImageJ).",
    )
    p.add_argument("image", metavar="IMAGE", help="TIFF, PNG or JPEG image")
    p.add_argument("--auto", action="store_true", help="segment everything (automatic masks)")
    p.add_argument("--points", metavar="POINTS.csv", help="napari Points CSV (2D: axis-0, axis-1)")
    p.add_argument("--boxes", metavar="BOXES.csv", help="napari Shapes CSV of rectangles")
    p.add_argument("--out", required=True, metavar="LABELS.tif", help="output label TIFF")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    g = p.add_argument_group("automatic mask generation (--auto)")
    g.add_argument("--points-per-side", type=int, default=32, metavar="N")
    g.add_argument("--pred-iou-thresh", type=float, default=0.8, metavar="X")
    g.add_argument("--stability-score-thresh", type=float, default=0.95, metavar="X")
    g.add_argument("--min-area", type=int, default=0, metavar="PIXELS",
                   help="remove islands and fill holes smaller than this")
    add_store_options(p)
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Segment ``args.image`` (everything, or the prompted objects) and write ``args.out``."""
    import numpy as np

    check_model(args.model)
    store = store_spec(args)
    image_path = existing_file(args.image, "image")
    if args.auto and (args.points or args.boxes):
        raise UsageError("--auto segments everything; do not combine it with --points/--boxes")
    if not args.auto and not (args.points or args.boxes):
        raise UsageError("give --auto, or prompts with --points and/or --boxes")
    image = read_image(image_path)
    prompts = None if args.auto else read_prompts(args, frame_axis=None)
    from ..core.stacks.normalization import normalize_image

    with input_errors(str(image_path)):
        ready = image.dtype == np.uint8 and (image.ndim == 2 or image.shape[-1] == 3)
        rgb = image if ready else normalize_image(image)[0]
    height, width = rgb.shape[:2]
    if prompts is not None:
        from ..core.annotations import validate_prompts

        with input_errors(""):
            prompts = validate_prompts(prompts, 1, height, width)
    with AtomicOutput(args.out, args.overwrite) as output:
        model = load_model(args, video=False)
        if args.auto:
            from ..api import segment_everything

            say("segmenting everything")
            with store_errors():
                labels = segment_everything(
                    rgb, model=model, store=store, points_per_side=args.points_per_side,
                    pred_iou_thresh=args.pred_iou_thresh,
                    stability_score_thresh=args.stability_score_thresh,
                    min_mask_region_area=args.min_area,
                )
        else:
            with store_errors():
                labels = _segment_prompts(model, rgb, prompts, store)
        write_tiff(output.tmp, labels, "YX")
        output.commit()
    say(f"wrote {args.out} ({int(len(np.unique(labels)) - 1)} objects)")
    return EXIT_OK


def _segment_prompts(model: Any, image: Any, prompts: list, store: Any) -> Any:
    """``H×W`` labels: each object's mask from its clicks/box; overlaps go to the highest logit."""
    import numpy as np

    from ..api import labels_from_logits
    from ..core.annotations.labels import label_dtype
    from ..core.image.predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model, store=store)
    predictor.set_image(image)
    ids, logits = [], []
    for p in prompts:
        masks, _, _ = predictor.predict(
            point_coords=p.points, point_labels=p.labels, box=p.box,
            multimask_output=False, return_logits=True,
        )
        ids.append(p.obj_id)
        logits.append(masks[0])
    out = np.zeros(logits[0].shape, dtype=label_dtype(max(ids)))
    return labels_from_logits(ids, np.stack(logits), out=out)
