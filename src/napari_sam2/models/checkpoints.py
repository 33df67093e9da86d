"""The official SAM 2 / SAM 2.1 checkpoints, and loading any checkpoint into our network.

Checkpoint files are read with ``torch.load(weights_only=True, mmap=True)``: a file that carries
pickled code is refused, never executed. Loading is strict, and a mismatch is explained in terms
of the likely fix (e.g. a SAM 2.0 file paired with a SAM 2.1 config).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .build import ConfigError, build_model, resolve_config

if TYPE_CHECKING:
    import torch

    from .sam2 import SAM2Base

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "REGISTRY",
    "checkpoint_path",
    "infer_config",
    "load_model",
    "read_state_dict",
    "resolve_device",
]

_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the network."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One official checkpoint.

    ``sha256`` and ``size`` are verified after a download when known (``None`` = not pinned).
    """

    name: str
    config: str
    url: str
    size_mb: int
    sha256: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# SHA-256 and size of each official file, as published with the files (the Hugging Face LFS
# pointers of facebook/sam2*-hiera-*) and agreed by other SAM 2 tools; every download and every
# cached file is checked against them before its first use.
_PINNED: dict[str, tuple[str, int]] = {
    "sam2.1_hiera_tiny": (
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156008466),
    "sam2.1_hiera_small": (
        "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184416285),
    "sam2.1_hiera_base_plus": (
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323606802),
    "sam2.1_hiera_large": (
        "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898083611),
    "sam2_hiera_tiny": (
        "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", 155906050),
    "sam2_hiera_small": (
        "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3", 184309650),
    "sam2_hiera_base_plus": (
        "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071", 323493298),
    "sam2_hiera_large": (
        "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", 897952466),
}


def _entry(version: str, size: str, short: str, size_mb: int) -> CheckpointInfo:
    folder = "092824" if version == "sam2.1" else "072824"
    name = f"{version}_hiera_{size}"
    sha256, n_bytes = _PINNED[name]
    return CheckpointInfo(
        name, f"{version}_hiera_{short}", f"{_BASE_URL}/{folder}/{name}.pt", size_mb,
        sha256=sha256, size=n_bytes,
    )


REGISTRY: dict[str, CheckpointInfo] = {
    info.name: info
    for version in ("sam2.1", "sam2")
    for info in (
        _entry(version, "tiny", "t", 149),
        _entry(version, "small", "s", 176),
        _entry(version, "base_plus", "b+", 309),
        _entry(version, "large", "l", 857),
    )
}
# Hugging Face model ids name the same files.
_ALIASES = {
    f"facebook/{info.name.split('_hiera_')[0]}-hiera-"
    f"{info.name.split('_hiera_')[1].replace('_', '-')}": name
    for name, info in REGISTRY.items()
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) picks CUDA, then Apple MPS, then CPU; anything else is checked."""
    import torch

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device!r} was asked for, but PyTorch sees no CUDA GPU; use 'cpu'."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"Device {device!r} was asked for, but Apple MPS is not available; use 'cpu'."
        )
    return dev


def checkpoint_path(name: str, download: bool = True, progress: bool = True) -> Path:
    """Local path of an official checkpoint, downloading it into the cache if needed."""
    from .download import cache_dir, fetch_checkpoint

    info = REGISTRY[_ALIASES.get(name, name)]
    if not download:
        return cache_dir() / info.filename
    return fetch_checkpoint(
        info.url,
        info.filename,
        known_hash=None if info.sha256 is None else f"sha256:{info.sha256}",
        expected_size=info.size,
        progress=progress,
    )


def _read_official(name: str, progress: bool) -> dict[str, torch.Tensor]:
    """Read an official checkpoint from the cache; a cached file that turns out to be unreadable
    (e.g. cut short by a crash of an older version) is removed and fetched once more."""
    path = checkpoint_path(name, progress=progress)
    try:
        return read_state_dict(path)
    except CheckpointError:
        path.unlink(missing_ok=True)
    return read_state_dict(checkpoint_path(name, progress=progress))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM 2 state dict from ``path`` safely.

    Accepts the official layout ``{"model": state_dict}`` and a bare state dict. Raises
    :class:`CheckpointError` with a message that says what to do for a missing, empty,
    truncated, non-PyTorch or code-carrying file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint file {path} is empty; delete it and download it again.")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Files in the legacy (non-zip) format cannot be memory-mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} contains pickled Python objects besides tensors, which napari-sam2 will "
                "not execute. If you trust its origin, load it in Python and save just the state "
                "dict: torch.save({'model': model_state_dict}, 'clean.pt')."
            ) from None
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (its contents could not be read as saved "
            "tensors). Check that it is the .pt file you meant; a download may have saved an "
            "error page instead."
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for damaged files
        raise CheckpointError(
            f"{path} is not a complete PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'}). "
            "A download may have been cut short: delete the file and fetch it again."
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path} does not hold a SAM 2 state dict (expected a mapping of parameter names to "
            "tensors, or {'model': such a mapping})."
        )
    return dict(obj)


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name of the bundled config that matches a state dict's architecture, e.g.
    ``"sam2_hiera_s"``."""
    width_key = "image_encoder.trunk.patch_embed.proj.weight"
    if width_key not in state_dict:
        raise CheckpointError(
            "This state dict has no Hiera image encoder (no 'image_encoder.trunk.*' weights); "
            "it is not a SAM 2 checkpoint."
        )
    width = state_dict[width_key].shape[0]
    num_blocks = 1 + max(
        int(k.split(".")[3]) for k in state_dict if k.startswith("image_encoder.trunk.blocks.")
    )
    sizes = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}
    size = sizes.get((width, num_blocks))
    if size is None:
        raise CheckpointError(
            f"Unrecognised Hiera trunk (width {width}, {num_blocks} blocks); pass the config "
            "the checkpoint was trained with."
        )
    version = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    return f"{version}_hiera_{size}"


def _explain_mismatch(
    config: str, state_dict: Mapping[str, Any], missing: list[str], unexpected: list[str],
    wrong_shape: list[str],
) -> str:
    lines = [f"The checkpoint does not fit config {config!r}."]
    for label, keys in (
        ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)
    ):
        if keys:
            shown = ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
            lines.append(f"  {label} keys: {shown}")
    try:
        likely = infer_config(state_dict)
    except CheckpointError:
        likely = None
    if likely is not None and Path(str(config)).stem != likely:
        kind = "SAM 2.1" if likely.startswith("sam2.1") else "SAM 2.0"
        lines.append(f"This is a {kind} checkpoint; use config {likely}.")
    return "\n".join(lines)


def load_state_dict_strict(model: SAM2Base, state_dict: Mapping[str, Any], config: str) -> None:
    """Copy ``state_dict`` into ``model``; raise :class:`CheckpointError` on any key/shape
    mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            _explain_mismatch(config, state_dict, missing, unexpected, wrong_shape)
        )
    model.load_state_dict(state_dict, strict=True)


def load_model(
    name_or_path: str | os.PathLike,
    config: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    image_size: int | None = None,
    video: bool = False,
    postprocessing: bool = True,
    progress: bool = True,
    precision: str = "auto",
) -> SAM2Base:
    """Build the network and load weights into it, in eval mode on ``device``.

    Args:
        name_or_path: an official name (``"sam2.1_hiera_tiny"``, or the Hugging Face id
            ``"facebook/sam2.1-hiera-tiny"``; downloaded once into the cache) or a checkpoint file.
        config: bundled config name or YAML path; by default the registry's config for an official
            name, or the one inferred from the file's weights.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda:0"``...
        image_size, video, postprocessing: passed to :func:`napari_sam2.models.build.build_model`.
        precision: ``"auto"`` (bfloat16 on CUDA and on CPUs with bfloat16 units, float32
            elsewhere; decided for ``device`` by measurement), ``"fp32"`` (strict, the
            reference's numbers), ``"fast"`` (float32 results, bfloat16 units where that keeps
            float32 accuracy) or ``"bf16"`` (~1 % error); see
            :mod:`napari_sam2.models.precision`.
    """
    from .precision import PRECISIONS, set_precision

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    key = _ALIASES.get(str(name_or_path), str(name_or_path))
    dev = resolve_device(device)  # fail fast, before any download
    if key in REGISTRY:
        state_dict = _read_official(key, progress)
        config = config if config is not None else REGISTRY[key].config
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise CheckpointError(
                f"{str(name_or_path)!r} is neither a checkpoint file nor an official model name "
                f"({', '.join(REGISTRY)})."
            )
        state_dict = read_state_dict(path)
    if config is None:
        config = infer_config(state_dict)
    else:
        try:
            resolve_config(config)
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
    model = build_model(
        config,
        image_size=image_size,
        postprocessing=postprocessing,
        video=video,
        precision="fp32",
    )
    load_state_dict_strict(model, state_dict, str(config))
    model.checkpoint_name = key if key in REGISTRY else Path(name_or_path).name  # for display
    return set_precision(model.to(dev), precision)  # "auto" is decided for the device
