"""``napari-sam2 track``: follow prompted objects through a stack into a label TIFF."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import EXIT_OK, Terminated, UsageError, add_common_options, say
from .inputs import (
    existing_file,
    input_errors,
    output_axes,
    parse_position,
    parse_range,
    read_prompts,
)
from .model_options import add_model_options, check_model, load_model
from .output import check_output_path
from .store_options import add_store_options, store_errors, store_spec
from .track_run import TrackRun

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``track`` command to the subcommands ``sub``."""
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
    p.add_argument("--resume", action="store_true",
                   help="continue a run of this same command that was killed or interrupted")
    p.add_argument("--direction", choices=("forward", "backward", "both"), default="both",
                   help="track towards later frames, earlier frames or both (default: both)")
    p.add_argument("--range", metavar="A:B", help="only frames A to B-1 (python slice)")
    p.add_argument("--frame-axis", type=int, default=0, metavar="AXIS",
                   help="stack axis to follow (default: 0)")
    p.add_argument("--channel-axis", type=int, default=None, metavar="AXIS",
                   help="stack axis holding channels (default: guessed)")
    p.add_argument("--position", action="append", metavar="AXIS=INDEX",
                   help="fix another axis, e.g. the z-plane of a T×Z×Y×X stack: --position 1=12")
    add_store_options(p)
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Track the prompted objects of ``args.stack`` and write their labels to ``args.out``."""
    import numpy as np

    from ..core.annotations import validate_prompts
    from ..core.stacks.source import open_frames

    if not (args.points or args.boxes):
        raise UsageError("give the prompts with --points POINTS.csv and/or --boxes BOXES.csv")
    check_model(args.model)
    store = store_spec(args)
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
        out = Path(args.out)
        check_output_path(out)
        command = {
            "stack": _describe_file(stack_path), "prompts": [repr(p) for p in prompts],
            "direction": args.direction, "range": args.range, "frame_axis": args.frame_axis,
            "channel_axis": args.channel_axis, "position": args.position,
            "model": _describe_file(Path(args.model)) if args.model and Path(args.model)
            .exists() else args.model, "config": args.config, "image_size": args.image_size,
            "precision": args.precision,
        }
        run = TrackRun(out, command, (num_frames, height, width), dtype,
                       output_axes(stack_path), resume=args.resume, overwrite=args.overwrite)
        completed = False
        try:
            model = load_model(args, video=True)
            from ..api import track

            n_obj = len({p.obj_id for p in prompts})
            say(
                f"tracking {n_obj} object{'s' * (n_obj != 1)} through {num_frames} frames "
                f"of {width}×{height} ({args.direction})"
            )
            with store_errors():
                track(
                    frames, prompts, model=model, direction=args.direction,
                    frame_range=frame_range, out=run.labels, progress=not args.quiet,
                    store=store, on_frame=run.frame_done,
                )
            if run.changed:
                say(f"warning: {len(run.changed)} frame(s) finished before the interruption "
                    f"came out differently now (first: {run.changed[0]})")
            run.commit()
            completed = True
        except (KeyboardInterrupt, Terminated):
            if run.done.any():
                say(f"{int(run.done.sum())} frame(s) finished are kept: run the same command "
                    "with --resume to continue")
            raise
        finally:
            if not completed:
                run.close()
    say(f"wrote {args.out}")
    return EXIT_OK


def _describe_file(path: Path) -> dict[str, object]:
    """A file as part of a run's identity: where it is, its size and modification time."""
    try:
        stat = os.stat(path)
        return {"path": str(Path(path).absolute()), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}
    except OSError:
        return {"path": str(path)}

