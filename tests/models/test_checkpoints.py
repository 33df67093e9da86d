"""Checkpoint loading: the official file layout reproduces the reference, and every kind of bad
file gets a clear error (never a traceback from inside torch, never executed pickled code)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from napari_sam2.models import checkpoints
from napari_sam2.models.build import build_model
from napari_sam2.models.checkpoints import (
    REGISTRY,
    CheckpointError,
    infer_config,
    load_model,
    read_state_dict,
)


def _meta_state_dict(config: str) -> dict[str, torch.Tensor]:
    return build_model(config, device="meta").state_dict()


def test_registry_has_the_eight_official_checkpoints() -> None:
    assert len(REGISTRY) == 8
    for name, info in REGISTRY.items():
        assert info.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/")
        assert info.filename == f"{name}.pt"
        build_model(info.config, device="meta")  # the config exists and builds


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_config_is_inferred_from_weights(name: str) -> None:
    assert infer_config(_meta_state_dict(REGISTRY[name].config)) == REGISTRY[name].config


def test_official_file_reproduces_reference(paired_models) -> None:
    ref, ours = paired_models("sam2.1_hiera_t", 256)
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a = ref.forward_image(image)
        b = ours.forward_image(image)
    for x, y in zip(a["backbone_fpn"], b["backbone_fpn"]):
        assert (x - y).abs().max().item() <= 1e-4


def test_bare_state_dict_and_inferred_config(tmp_path: Path, official_checkpoint) -> None:
    sd = torch.load(official_checkpoint("sam2_hiera_t"), weights_only=True)["model"]
    path = tmp_path / "bare.pt"
    torch.save(sd, path)
    model = load_model(path, device="cpu", image_size=256)
    assert model.image_size == 256
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_sam2_checkpoint_with_sam21_config_names_the_fix(official_checkpoint) -> None:
    with pytest.raises(CheckpointError) as info:
        load_model(official_checkpoint("sam2_hiera_t"), config="sam2.1_hiera_t", device="cpu")
    message = str(info.value)
    assert "unexpected" in message or "missing" in message
    assert "no_obj_embed_spatial" in message
    assert "SAM 2.0 checkpoint; use config sam2_hiera_t" in message


def test_size_mismatch_names_the_fix(official_checkpoint) -> None:
    with pytest.raises(CheckpointError, match="use config sam2.1_hiera_t"):
        load_model(official_checkpoint("sam2.1_hiera_t"), config="sam2.1_hiera_s", device="cpu")


def test_missing_file() -> None:
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor an official"):
        load_model("/nonexistent/model.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict("/nonexistent/model.pt")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(path)


def test_truncated_file(tmp_path: Path, official_checkpoint) -> None:
    data = official_checkpoint("sam2.1_hiera_t").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a complete PyTorch checkpoint"):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [b"hello, I am not a checkpoint\n", bytes(range(256)) * 4, b"<html>404 Not Found</html>"],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="notes.pt") as info:
        load_model(path)
    assert "pickled Python objects" not in str(info.value)


class _Payload:
    """Unpickling this would create a marker file."""

    marker: str = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-was-executed"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model(path)
    assert not marker.exists()


def test_tensor_dict_that_is_not_sam2(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint"):
        load_model(path)
    path2 = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path2)
    with pytest.raises(CheckpointError, match="does not hold a SAM 2 state dict"):
        load_model(path2)


def test_unknown_device_is_refused_before_loading(official_checkpoint) -> None:
    with pytest.raises((ValueError, RuntimeError)):
        load_model(official_checkpoint("sam2.1_hiera_t"), device="nonsense")


def test_official_name_uses_the_cache(tmp_path: Path, monkeypatch, official_checkpoint) -> None:
    """An official name resolves through the cache directory, so a file placed there works
    offline."""
    import dataclasses
    import hashlib

    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path))
    data = official_checkpoint("sam2.1_hiera_t").read_bytes()
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(data)
    # these test weights stand for the official file: pin their digest in its place
    pinned = dataclasses.replace(checkpoints.REGISTRY["sam2.1_hiera_tiny"],
                                 sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(checkpoints.REGISTRY, "sam2.1_hiera_tiny", pinned)
    model = load_model("sam2.1_hiera_tiny", device="cpu", image_size=256)
    assert model.image_size == 256
    model = load_model("facebook/sam2.1-hiera-tiny", device="cpu", image_size=256)
    assert model.image_size == 256
    # a file under the official name that is not the official file is never loaded
    monkeypatch.setitem(checkpoints.REGISTRY, "sam2.1_hiera_tiny",
                        dataclasses.replace(pinned, sha256="0" * 64))
    monkeypatch.setattr("napari_sam2.models.download._download",
                        lambda *a, **k: (_ for _ in ()).throw(
                            checkpoints.CheckpointError("offline")))
    with pytest.raises(CheckpointError, match="offline"):
        load_model("sam2.1_hiera_tiny", device="cpu", image_size=256)


def test_corrupt_cached_official_file_is_removed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path))
    cached = tmp_path / "sam2.1_hiera_tiny.pt"
    cached.write_bytes(b"PK\x03\x04 truncated")

    def no_network(*args, **kwargs):
        if cached.exists():
            return cached
        raise checkpoints.CheckpointError("no network in this test")

    monkeypatch.setattr("napari_sam2.models.download.fetch_checkpoint", no_network)
    with pytest.raises(CheckpointError):
        load_model("sam2.1_hiera_tiny", device="cpu")
    assert not cached.exists()
