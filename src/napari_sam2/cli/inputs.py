"""Reading the command line's inputs: prompt CSVs, images, ranges and positions.

Every problem with what the user passed becomes a :class:`UsageError` with a one-line message
(exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import UsageError, one_line

__all__ = [
    "check_dims", "existing_file", "input_errors", "output_axes", "parse_position",
    "parse_range", "read_image", "read_prompts",
]


@contextlib.contextmanager
def input_errors(what: str) -> Iterator[None]:
    """Turn errors reading user input into :class:`UsageError` (exit 2)."""
    from ..core.stacks.frame_memory import FrameTooLargeError
    from ..core.stacks.source import FrameReadError

    try:
        yield
    except UsageError:
        raise
    except (OSError, ValueError, TypeError, IndexError, FrameReadError,
            FrameTooLargeError) as err:
        raise UsageError(f"{what}: {one_line(err)}" if what else one_line(err)) from err


def existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {path} does not exist")
    return p


def parse_range(text: str | None, num_frames: int) -> tuple[int, int] | None:
    """``"a:b"`` (python slice, ``b`` exclusive, either end optional) -> inclusive (a, b - 1)."""
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        first = int(start) if start.strip() else 0
        end = int(stop) if stop.strip() else num_frames
    except ValueError:
        raise UsageError(f"--range must look like a:b (frames a to b-1), got {text!r}") from None
    if not 0 <= first < end <= num_frames:
        raise UsageError(
            f"--range {text} is not within the stack's {num_frames} frames (0:{num_frames})"
        )
    return first, end - 1


def parse_position(items: list[str] | None) -> dict[int, int] | None:
    if not items:
        return None
    position = {}
    for item in items:
        axis, sep, index = item.partition("=")
        try:
            if not sep:
                raise ValueError
            position[int(axis)] = int(index)
        except ValueError:
            raise UsageError(f"--position must look like AXIS=INDEX, got {item!r}") from None
    return position


def read_prompts(args: argparse.Namespace, frame_axis: int | None) -> list:
    from ..core.annotations import merge_prompts, prompts_from_boxes, prompts_from_points
    from ..core.annotations.napari_csv import read_points_csv, read_shapes_csv

    groups = []
    if args.points:
        existing_file(args.points, "points file")
        with input_errors(""):
            coords, positive, obj_ids = read_points_csv(args.points)
        with input_errors(args.points):
            check_dims(coords.shape[1], frame_axis, "points")
            groups.append(prompts_from_points(coords, positive, obj_ids, frame_axis=frame_axis))
    if args.boxes:
        existing_file(args.boxes, "boxes file")
        with input_errors(""):
            rects, box_ids = read_shapes_csv(args.boxes)
        with input_errors(args.boxes):
            if rects:
                check_dims(rects[0].shape[1], frame_axis, "rectangles")
            groups.append(prompts_from_boxes(rects, box_ids, frame_axis=frame_axis))
    with input_errors(""):
        prompts = merge_prompts(*groups)
    if not prompts:
        raise UsageError("no prompts: the points/boxes files hold no annotations")
    return prompts


def check_dims(ndim: int, frame_axis: int | None, what: str) -> None:
    if frame_axis is None and ndim != 2:
        raise ValueError(
            f"the {what} have {ndim} coordinates, but the image is 2D: expected (y, x) "
            "(axis-0, axis-1)"
        )
    if frame_axis is not None and ndim < 3:
        raise ValueError(
            f"the {what} have {ndim} coordinates (y, x) but the stack needs a frame coordinate "
            "too: draw them on a Points/Shapes layer over the stack"
        )


def output_axes(path: Path, default: str = "T") -> str:
    """``"ZYX"`` for a TIFF whose first axis is Z, else ``"TYX"``."""
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        with contextlib.suppress(Exception):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if tif.series and tif.series[0].axes[:1] == "Z":
                    return "ZYX"
    return f"{default}YX"


def read_image(path: Path) -> Any:
    import numpy as np

    if path.is_dir():
        raise UsageError(f"image {path} is a folder; segment takes one image file")
    with input_errors(str(path)):
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            image = iio.imread(path)
    image = np.asarray(image)
    image = np.squeeze(image) if image.ndim > 2 else image
    is_multichannel = image.ndim == 3 and (image.shape[-1] <= 4 or image.shape[0] <= 4)
    if image.ndim != 2 and not is_multichannel:
        raise UsageError(
            f"image {path} has shape {image.shape}: segment takes one 2D image (H×W or with a "
            f"few channels); for a stack use 'napari-sam2 track'"
        )
    return image
