"""``napari-sam2 embed``: encode a stack into its embedding store ahead of annotation."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, UsageError, add_common_options, say
from .inputs import existing_file, input_errors, parse_position, parse_range
from .model_options import add_model_options, check_model, load_model
from .store_options import add_store_options, store_errors

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``embed`` command to the subcommands ``sub``."""
    p = sub.add_parser(
        "embed", help="precompute a stack's image features into an embedding store",
        description="Encode every frame of STACK (or --range) with the model and keep the "
                    "features in an embedding store, so that clicking and tracking later, in "
                    "napari or with 'track', do not encode them again. Resumable: frames "
                    "already stored for their current pixels are skipped.",
    )
    p.add_argument("stack", metavar="STACK", help="TIFF stack, folder of images or .zarr")
    p.add_argument("--range", metavar="A:B", help="only frames A to B-1 (python slice)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace whatever else than an embedding store is at --out")
    p.add_argument("--frame-axis", type=int, default=0, metavar="AXIS",
                   help="stack axis to follow (default: 0)")
    p.add_argument("--channel-axis", type=int, default=None, metavar="AXIS",
                   help="stack axis holding channels (default: guessed)")
    p.add_argument("--position", action="append", metavar="AXIS=INDEX",
                   help="fix another axis, e.g. the z-plane of a T×Z×Y×X stack: --position 1=12")
    add_store_options(p, out=True)
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fill the embedding store of ``args.stack``."""
    from tqdm import tqdm

    from ..core.stacks.source import open_frames
    from ..core.store.embedding_store import check_store_path, folder_size
    from ..core.video.precompute import precompute
    from ..core.video.predictor import SAM2VideoPredictor

    check_model(args.model)
    stack_path = existing_file(args.stack, "stack")
    with input_errors(str(stack_path)):
        frames = open_frames(
            stack_path, frame_axis=args.frame_axis, channel_axis=args.channel_axis,
            position=parse_position(args.position),
        )
    with frames:
        frame_range = parse_range(args.range, frames.num_frames)
        model = load_model(args, video=True)
        predictor = SAM2VideoPredictor(model, feature_cache_size=1)
        with store_errors():
            if args.overwrite and args.store is not None:
                check_store_path(Path(args.store).expanduser().absolute(), overwrite=True)
            state = predictor.init_state(frames, store=args.store)
        with state:
            store = state.store.store
            if store.read_only:
                raise UsageError(
                    f"{store.path} cannot be written (read-only); choose another --out"
                )
            first, last = (0, frames.num_frames - 1) if frame_range is None else frame_range
            say(f"embedding frames {first}..{last} of {frames.name} into {store.path}")
            encoded = skipped = 0
            bar = tqdm(total=last - first + 1, desc="embedding", unit="frame", disable=args.quiet)
            try:
                for step in precompute(predictor, state, frame_range):
                    encoded += step.encoded
                    skipped += not step.encoded
                    bar.update(1)
            finally:
                bar.close()
            done = int(store.complete().sum())
    size = folder_size(store.path)
    say(
        f"{done}/{frames.num_frames} frames stored in {store.path} ({size / 1e6:.1f} MB): "
        f"{encoded} encoded now, {skipped} already stored"
    )
    return EXIT_OK
