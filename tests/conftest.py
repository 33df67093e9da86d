"""Shared fixtures. The parity tests need the reference implementation (``sam2==1.1.0``);
without it the run fails on purpose, so parity can never silently stop being tested."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    try:
        import sam2  # noqa: F401
    except ImportError as err:
        raise pytest.UsageError(
            "The reference implementation sam2==1.1.0 is required by the parity tests but "
            f"could not be imported ({err}). Install it with\n"
            "  SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0\n"
            "or run the full setup: bash scripts/test.sh"
        ) from None


@pytest.fixture(scope="session", autouse=True)
def _cache_folder(tmp_path_factory: pytest.TempPathFactory):
    """The whole run's cache (runs in progress, records of temporary files, measurements)
    in a folder of its own, never the user's; a test may set its own."""
    import os

    folder = tmp_path_factory.mktemp("cache")
    before = os.environ.get("NAPARI_SAM2_CACHE")
    os.environ["NAPARI_SAM2_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("NAPARI_SAM2_CACHE", None)
    else:
        os.environ["NAPARI_SAM2_CACHE"] = before


@pytest.fixture(autouse=True)
def _embedding_stores(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test's default embedding stores in a folder of its own (never the user's cache,
    and never features another test stored)."""
    folder = tmp_path_factory.mktemp("embeddings")
    monkeypatch.setenv("NAPARI_SAM2_EMBEDDINGS", str(folder))
    return folder


def realistic_weights(model) -> None:
    """Objects present (presence bias +10) and logits of a trained model's size (the mask
    hypernetworks' last layers ×20), in place: applied to both sides of a comparison, so that
    it proves something (raw random weights give logits of about ±0.5, or no object)."""
    import torch

    decoder = model.sam_mask_decoder
    with torch.no_grad():
        decoder.pred_obj_score_head.layers[-1].bias += 10.0
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 20.0
            mlp.layers[-1].bias *= 20.0


def reference_config_name(config: str) -> str:
    """Our config name (``sam2.1_hiera_t``) as the reference spells it."""
    folder = "sam2.1" if config.startswith("sam2.1") else "sam2"
    return f"configs/{folder}/{config}.yaml"


@functools.lru_cache(maxsize=4)
def _reference_state(config: str, image_size: int, seed: int):
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    ref = build_sam2(
        reference_config_name(config),
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={image_size}"],
    )
    return ref.eval()


@pytest.fixture(scope="session")
def reference_model():
    """``reference_model(config, image_size, seed=0)``: the reference network with random
    weights."""
    return lambda config, image_size=256, seed=0: _reference_state(config, image_size, seed)


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory, reference_model):
    """``official_checkpoint(config, image_size)``: path of a file in the official layout
    (``{"model": state_dict}``) written from the reference network's random weights."""
    import torch

    root = tmp_path_factory.mktemp("checkpoints")

    def make(config: str, image_size: int = 256, seed: int = 0) -> Path:
        path = root / f"{config}_{image_size}_{seed}.pt"
        if not path.exists():
            ref = reference_model(config, image_size, seed)
            torch.save({"model": ref.state_dict()}, path)
        return path

    return make


@pytest.fixture(scope="session")
def paired_models(reference_model, official_checkpoint):
    """``paired_models(config, image_size)`` -> ``(reference, ours)`` on the same random weights,
    ours loaded through the real checkpoint loader; both in eval mode on the CPU."""
    from napari_sam2.models.checkpoints import load_model

    cache: dict = {}

    def make(config: str, image_size: int = 256, seed: int = 0):
        key = (config, image_size, seed)
        if key not in cache:
            ref = reference_model(config, image_size, seed)
            ours = load_model(
                official_checkpoint(config, image_size, seed),
                config=config,
                device="cpu",
                image_size=image_size,
                precision="fast",  # parity is proven in float32; bfloat16 has its own tests
            )
            cache[key] = (ref, ours)
        return cache[key]

    return make
