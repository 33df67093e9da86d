"""The model options of ``track`` and ``segment`` (``--model``, ``--config``, ``--device``,
``--image-size``, ``--precision``), and checking and loading the model they name."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .common import PROG, UsageError, one_line, say
from .inputs import input_errors

__all__ = ["add_model_options", "check_model", "load_model"]


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The "model" argument group of a command that runs SAM 2."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="sam2.1_hiera_tiny", metavar="NAME|PATH",
                   help="official model name (downloaded once; see 'models') or a checkpoint "
                        "file (default: %(default)s)")
    g.add_argument("--config", default=None, metavar="CFG",
                   help="config name or YAML for a checkpoint file (default: inferred)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    g.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="model input size (default: the config's, 1024)")
    g.add_argument("--precision", choices=["auto", "fast", "fp32", "bf16"], default="auto",
                   help="auto: bfloat16 on CUDA and on CPUs with bfloat16 units (measured), "
                        "float32 elsewhere; fp32: strict, the reference's numbers; fast: "
                        "float32 results, bfloat16 units where the CPU keeps float32 accuracy; "
                        "bf16: about 1%% error (default: %(default)s)")


def check_model(name: str) -> None:
    """Refuse (:class:`UsageError`) a ``--model`` that is neither an official name nor a file."""
    from ..models.checkpoints import _ALIASES, REGISTRY

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


def load_model(args: argparse.Namespace, video: bool) -> Any:
    """The model the options name, on their device; a bad checkpoint or config is a usage error."""
    from ..models import checkpoints
    from ..models.build import ConfigError

    with input_errors("--device"):
        device = checkpoints.resolve_device(args.device)
    say(f"loading model {args.model} on {device}")
    try:
        return checkpoints.load_model(
            args.model, config=args.config, device=device, image_size=args.image_size,
            video=video, progress=not args.quiet, precision=args.precision,
        )
    except (checkpoints.CheckpointError, ConfigError) as err:
        raise UsageError(one_line(err)) from err
