"""Synthetic sample data: deterministic 16-bit stacks, a cell that really divides, and napari
sample contributions that load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam2._sample_data import (
    DIVIDING_CELL,
    make_timelapse,
    make_zstack,
    timelapse_sample,
    zstack_sample,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("make", "shape"), [(make_timelapse, (24, 128, 128)),
                                             (make_zstack, (32, 128, 128))])
def test_deterministic_uint16_with_ground_truth(make, shape) -> None:
    image, labels = make(seed=3, return_labels=True)
    assert image.shape == labels.shape == shape
    assert image.dtype == np.uint16 and labels.dtype == np.uint16
    np.testing.assert_array_equal(image, make(seed=3))
    np.testing.assert_array_equal(labels, make(seed=3, return_labels=True)[1])
    assert not np.array_equal(image, make(seed=4))
    # Noisy 16-bit data, not 8-bit values in a 16-bit container, and objects brighter than
    # the background.
    assert image.max() > 255 and len(np.unique(image)) > 200
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()


def test_uneven_illumination() -> None:
    image, labels = make_timelapse(return_labels=True)
    far_from_cells = ~ndi.binary_dilation(labels[0] > 0, iterations=4)
    background = np.where(far_from_cells, image[0] - 100.0, np.nan)  # minus the camera offset
    # The mean background of 32×32 tiles differs across the field.
    tiles = np.nanmean(background.reshape(4, 32, 4, 32), axis=(1, 3))
    assert tiles.max() > 1.3 * tiles.min()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_dividing_cell_divides(seed: int) -> None:
    _, labels = make_timelapse(seed=seed, return_labels=True)
    first, last = labels[0], labels[-1]
    dividing = lambda frame: np.isin(frame, (DIVIDING_CELL, DIVIDING_CELL + 1))  # noqa: E731
    assert ndi.label(dividing(first))[1] == 1
    assert ndi.label(dividing(last))[1] == 2
    # All cells stay apart: 5 blobs at the start, 6 at the end.
    assert ndi.label(first > 0)[1] == 5
    assert ndi.label(last > 0)[1] == 6
    assert set(np.unique(last)) == {0, 1, 2, 3, 4, 5, 6}


def test_zstack_blobs_are_3d_objects() -> None:
    _, labels = make_zstack(return_labels=True)
    ids = np.unique(labels)[1:]
    assert len(ids) >= 8
    for i in ids:
        zs = np.flatnonzero((labels == i).any(axis=(1, 2)))
        assert 4 <= len(zs) < labels.shape[0]  # spans several planes, not the whole stack


def test_layer_data_tuples() -> None:
    for sample, name in ((timelapse_sample, "SAM2 time-lapse"), (zstack_sample, "SAM2 z-stack")):
        ((data, meta, kind),) = sample()
        assert kind == "image" and meta["name"] == name and data.dtype == np.uint16
        low, high = meta["contrast_limits"]
        assert data.min() <= low < high <= data.max()


def test_samples_are_registered_in_the_manifest() -> None:
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(ROOT / "src" / "napari_sam2" / "napari.yaml")
    samples = {s.key: s for s in manifest.contributions.sample_data}
    assert {"timelapse", "zstack"} <= set(samples)
    commands = {c.id: c for c in manifest.contributions.commands}
    for sample in samples.values():
        command = commands[sample.command]
        module, func = command.python_name.split(":")
        loaded = getattr(__import__(module, fromlist=[func]), func)()
        assert loaded[0][2] == "image"
