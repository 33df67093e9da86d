"""``napari-sam2`` command line: track and segment without a GUI, manage checkpoints, run a demo.

Commands::

    napari-sam2 track STACK --points POINTS.csv [--boxes BOXES.csv] --out LABELS.tif
    napari-sam2 segment IMAGE --auto --out LABELS.tif
    napari-sam2 segment IMAGE --points POINTS.csv [--boxes BOXES.csv] --out MASK.tif
    napari-sam2 models
    napari-sam2 download NAME
    napari-sam2 demo [--model PATH]

Prompts are CSV files saved from napari Points / Shapes layers ("File > Save Selected
Layers..."); see :mod:`napari_sam2.core.annotations.prompts` for the columns used (``obj_id``,
``positive``).

Outputs are written atomically: into a temporary file next to the destination, renamed onto it
only when complete; after an error, Ctrl-C or SIGTERM no output (and no temporary file) is
left. Exit status: 0 success, 1 runtime failure, 2 bad usage or input, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). Errors are one line, ``napari-sam2: error: ...``; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from ._cli_inputs import (
    existing_file,
    input_errors,
    one_line,
    output_axes,
    parse_position,
    parse_range,
    read_image,
    read_prompts,
)
from ._cli_output import AtomicOutput, UsageError, write_tiff

PROG = "napari-sam2"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so that clean-up code runs."""


# ---------------------------------------------------------------------------------------------
def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
def _check_model(name: str) -> None:
    from .models.checkpoints import _ALIASES, REGISTRY

    if name in REGISTRY or name in _ALIASES:
        return
    if Path(name).is_file():
        return
    if Path(name).exists():
        raise UsageError(f"model {name} is not a checkpoint file")
    looks_like_path = os.sep in name or name.endswith((".pt", ".pth", ".ckpt"))
    if looks_like_path:
        raise UsageError(f"checkpoint file {name} does not exist")
    raise UsageError(
        f"unknown model {name!r}: use one of {', '.join(REGISTRY)} or a checkpoint file "
        f"(see '{PROG} models')"
    )


def _load_model(args: argparse.Namespace, video: bool) -> Any:
    from .models.build import ConfigError
    from .models.checkpoints import CheckpointError, load_model, resolve_device

    with input_errors("--device"):
        device = resolve_device(args.device)
    _say(f"loading model {args.model} on {device}")
    try:
        return load_model(
            args.model, config=args.config, device=device, image_size=args.image_size,
            video=video, progress=not args.quiet, precision=args.precision,
        )
    except (CheckpointError, ConfigError) as err:
        raise UsageError(one_line(err)) from err


# ---------------------------------------------------------------------------------------------
def cmd_track(args: argparse.Namespace) -> int:
    import numpy as np

    from .core.annotations.prompts import validate_prompts
    from .core.stacks.source import open_frames

    if not (args.points or args.boxes):
        raise UsageError("give the prompts with --points POINTS.csv and/or --boxes BOXES.csv")
    _check_model(args.model)
    stack_path = existing_file(args.stack, "stack")
    prompts = read_prompts(args, frame_axis=args.frame_axis)
    position = parse_position(args.position)
    with input_errors(str(stack_path)):
        try:
            frames = open_frames(
                stack_path, frame_axis=args.frame_axis, channel_axis=args.channel_axis,
                position=position,
            )
        except ValueError as err:
            if "frame_axis" in str(err) or "position" in str(err):
                raise ValueError(
                    f"{err} (on the command line: --frame-axis AXIS, --channel-axis AXIS, "
                    "--position AXIS=INDEX)"
                ) from err
            raise
    with frames:
        num_frames = frames.num_frames
        height, width = frames.frame_shape
        with input_errors(""):
            prompts = validate_prompts(prompts, num_frames, height, width)
        frame_range = parse_range(args.range, num_frames)
        if frame_range is not None and not any(
            frame_range[0] <= p.frame_idx <= frame_range[1] for p in prompts
        ):
            raise UsageError(f"no prompt lies within --range {args.range}")
        dtype = np.dtype(np.uint16 if max(p.obj_id for p in prompts) <= 65535 else np.uint32)
        with AtomicOutput(args.out, args.overwrite) as output:
            import tifffile

            axes = output_axes(stack_path)
            with input_errors(f"cannot write {args.out}"):
                labels = tifffile.memmap(
                    output.tmp, shape=(num_frames, height, width), dtype=dtype,
                    imagej=dtype == np.uint16, photometric="minisblack",
                    metadata={"axes": axes},
                )
            try:
                model = _load_model(args, video=True)
                from .api import track

                n_obj = len({p.obj_id for p in prompts})
                _say(
                    f"tracking {n_obj} object{'s' * (n_obj != 1)} through {num_frames} frames "
                    f"of {width}×{height} ({args.direction})"
                )
                track(
                    frames, prompts, model=model, direction=args.direction,
                    frame_range=frame_range, out=labels, progress=not args.quiet,
                )
                labels.flush()
            finally:
                del labels
            output.commit()
    _say(f"wrote {args.out}")
    return EXIT_OK


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    _check_model(args.model)
    image_path = existing_file(args.image, "image")
    if args.auto and (args.points or args.boxes):
        raise UsageError("--auto segments everything; do not combine it with --points/--boxes")
    if not args.auto and not (args.points or args.boxes):
        raise UsageError("give --auto, or prompts with --points and/or --boxes")
    image = read_image(image_path)
    prompts = None if args.auto else read_prompts(args, frame_axis=None)
    from .core.stacks.normalization import normalize_image

    with input_errors(str(image_path)):
        ready = image.dtype == np.uint8 and (image.ndim == 2 or image.shape[-1] == 3)
        rgb = image if ready else normalize_image(image)[0]
    height, width = rgb.shape[:2]
    if prompts is not None:
        from .core.annotations.prompts import validate_prompts

        with input_errors(""):
            prompts = validate_prompts(prompts, 1, height, width)
    with AtomicOutput(args.out, args.overwrite) as output:
        model = _load_model(args, video=False)
        if args.auto:
            from .api import segment_everything

            _say("segmenting everything")
            labels = segment_everything(
                rgb, model=model, points_per_side=args.points_per_side,
                pred_iou_thresh=args.pred_iou_thresh,
                stability_score_thresh=args.stability_score_thresh,
                min_mask_region_area=args.min_area,
            )
        else:
            labels = _segment_prompts(model, rgb, prompts)
        write_tiff(output.tmp, labels, "YX")
        output.commit()
    _say(f"wrote {args.out} ({int(len(np.unique(labels)) - 1)} objects)")
    return EXIT_OK


def _segment_prompts(model: Any, image: Any, prompts: list) -> Any:
    """``H×W`` labels: each object's mask from its clicks/box; overlaps go to the highest logit."""
    import numpy as np

    from .api import labels_from_logits
    from .core.image.predictor import SAM2ImagePredictor
    from .core.annotations.labels import label_dtype

    predictor = SAM2ImagePredictor(model)
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


def cmd_models(args: argparse.Namespace) -> int:
    from .models.checkpoints import REGISTRY, checkpoint_path
    from .models.download import cache_dir

    rows = [("name", "config", "download", "cached", "path")]
    for name, info in REGISTRY.items():
        path = checkpoint_path(name, download=False)
        rows.append((name, info.config, f"~{info.size_mb} MB",
                     "yes" if path.is_file() else "no", str(path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"checkpoint cache: {cache_dir()} (set NAPARI_SAM2_CACHE to change it)")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from .models.checkpoints import _ALIASES, REGISTRY, CheckpointError, checkpoint_path
    from .models.checkpoints import read_state_dict

    if args.name not in REGISTRY and args.name not in _ALIASES:
        raise UsageError(f"unknown model {args.name!r}: use one of {', '.join(REGISTRY)}")
    path = checkpoint_path(args.name, progress=not args.quiet)
    try:
        read_state_dict(path)  # a complete, safe PyTorch checkpoint?
    except CheckpointError as err:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"{one_line(err)} The file was removed; try again.") from err
    print(path)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ._cli_demo import run_demo  # napari and Qt only for this command

    return run_demo(args)


# ---------------------------------------------------------------------------------------------
def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="sam2.1_hiera_tiny", metavar="NAME|PATH",
                   help="official model name (downloaded once; see 'models') or a checkpoint "
                        "file (default: %(default)s)")
    g.add_argument("--config", default=None, metavar="CFG",
                   help="config name or YAML for a checkpoint file (default: inferred)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    g.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="model input size (default: the config's, 1024)")
    g.add_argument("--precision", choices=["fast", "fp32", "bf16"], default="fast",
                   help="fast: float32 results, bfloat16 units where the CPU keeps float32 "
                        "accuracy; fp32: strict; bf16: faster, about 1%% error "
                        "(default: %(default)s)")


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    default = False if top else argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", default=default,
                   help="show tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment Anything 2 for microscopy: track objects through time-lapses and "
                    "z-stacks, segment images, manage checkpoints.",
        epilog="Exit status: 0 ok, 1 failure, 2 bad usage or input, 130 interrupted.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "track", help="follow prompted objects through a stack -> label TIFF",
        description="Follow objects clicked (Points CSV) or boxed (Shapes CSV) on some frames "
                    "through every frame of STACK; write a T×H×W label TIFF (uint16, ImageJ).",
    )
    p.add_argument("stack", metavar="STACK", help="TIFF stack, folder of images or .zarr")
    p.add_argument("--points", metavar="POINTS.csv",
                   help="napari Points CSV (columns axis-0.., optional obj_id, positive)")
    p.add_argument("--boxes", metavar="BOXES.csv", help="napari Shapes CSV of rectangles")
    p.add_argument("--out", required=True, metavar="LABELS.tif", help="output label TIFF")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--direction", choices=("forward", "backward", "both"), default="both",
                   help="track towards later frames, earlier frames or both (default: both)")
    p.add_argument("--range", metavar="A:B", help="only frames A to B-1 (python slice)")
    p.add_argument("--frame-axis", type=int, default=0, metavar="AXIS",
                   help="stack axis to follow (default: 0)")
    p.add_argument("--channel-axis", type=int, default=None, metavar="AXIS",
                   help="stack axis holding channels (default: guessed)")
    p.add_argument("--position", action="append", metavar="AXIS=INDEX",
                   help="fix another axis, e.g. the z-plane of a T×Z×Y×X stack: --position 1=12")
    _add_model_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_track)

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
    _add_model_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("models", help="list the official checkpoints and which are cached")
    _add_common(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("download", help="download an official checkpoint into the cache",
                       description="Download (once) and verify an official checkpoint; print "
                                   "its path.")
    p.add_argument("name", metavar="NAME", help="e.g. sam2.1_hiera_tiny (see 'models')")
    _add_common(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("demo", help="open napari with a sample time-lapse and the SAM 2 widget")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="load this model into the widget, e.g. a local checkpoint file to work "
                        "offline (default: choose in the widget)")
    p.add_argument("--config", default=None, metavar="CFG",
                   help="config name or YAML for a checkpoint file (default: inferred)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="model input size (default: the widget's setting)")
    p.add_argument("--no-run", action="store_true", help=argparse.SUPPRESS)
    _add_common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse usage errors raise SystemExit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except _Terminated:
        _say("terminated")
        return EXIT_TERMINATED
    except Exception as err:  # noqa: BLE001 - every failure becomes one line (or a traceback)
        if args.debug:
            traceback.print_exc()
        usage = isinstance(err, UsageError)
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USAGE if usage else EXIT_FAILURE
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
