"""Synthetic sample data (napari ``sample_data`` contributions): small, deterministic, 16-bit.

* :func:`make_timelapse` -- 24×128×128 ``uint16`` time-lapse: four cells gliding around the
  field of view and one cell in the middle that divides (one blob at the start, two
  well-separated daughters at the end), on a camera offset, with uneven illumination, slow
  bleaching and shot (Poisson) plus read noise.
* :func:`make_zstack` -- 32×128×128 ``uint16`` z-stack of ellipsoidal nuclei, blurred along z,
  dimmer with depth, uneven illumination and noise.

Both are generated from a seed (same seed, identical array) in well under a second, and can
also return their ground-truth label volumes, for tests and demos. No network access: these
stand in for ``skimage.data.cells3d`` and friends, which need a download.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["make_timelapse", "make_zstack", "timelapse_sample", "zstack_sample"]

#: Label of the dividing cell in :func:`make_timelapse`'s ground truth; its second daughter
#: gets ``DIVIDING_CELL + 1`` from the frame on which the daughters separate.
DIVIDING_CELL = 5


def _soft_ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float,
    edge: float = 1.2,
) -> tuple[np.ndarray, np.ndarray]:
    """``(profile, inside)``: a soft-edged ellipse (1 inside, 0 outside, ~``edge`` px ramp)."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    r = np.sqrt(u * u + v * v)  # 1 on the outline
    mean_radius = 0.5 * (rx + ry)
    profile = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * mean_radius / edge * 2.0, -30, 30)))
    # A brighter nucleus-like core makes the cells look less like flat disks.
    profile = profile * (1.0 + 0.5 * np.exp(-((r / 0.55) ** 2)))
    return profile, r <= 1.0


def _illumination(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return 0.55 + 0.45 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))


def _camera(rng: np.random.Generator, expected: np.ndarray, offset: float, read_noise: float):
    """Photon counts (Poisson) + camera offset + Gaussian read noise, as ``uint16``."""
    counts = rng.poisson(np.maximum(expected, 0.0)).astype(np.float32)
    counts += offset + rng.normal(0.0, read_noise, size=expected.shape).astype(np.float32)
    return np.clip(np.round(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def make_timelapse(
    seed: int = 0, *, return_labels: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A 24×128×128 ``uint16`` time-lapse (T×Y×X) of five cells, one of which divides.

    Args:
        seed: random seed; the same seed gives an identical array.
        return_labels: also return the T×Y×X ``uint16`` ground truth: cells 1-4 move,
            cell :data:`DIVIDING_CELL` (5) divides; from the frame on which its daughters no
            longer touch, the second daughter is labelled 6.

    Returns:
        The image, or ``(image, labels)``.
    """
    rng = np.random.default_rng(seed)
    t_n, h, w = 24, 128, 128
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy0, cx0 = (h - 1) / 2, (w - 1) / 2
    illum = _illumination(h, w, h * 0.3 + rng.uniform(-8, 8), w * 0.7 + rng.uniform(-8, 8), 60.0)
    signal = np.zeros((t_n, h, w), np.float32)
    labels = np.zeros((t_n, h, w), np.uint16)

    # Four cells circling the centre at ~45 px, a quarter turn apart, never near each other
    # or the dividing cell.
    start = rng.uniform(0, 2 * np.pi)
    direction = rng.choice([-1.0, 1.0])
    for k in range(4):
        radius = rng.uniform(42, 46)
        speed = rng.uniform(0.8, 1.2) / radius  # radians per frame (about 1 px/frame)
        ry, rx = rng.uniform(7, 9), rng.uniform(9, 11)
        brightness = rng.uniform(280, 420)
        spin = rng.uniform(-0.05, 0.05)
        angle0 = rng.uniform(0, np.pi)
        for t in range(t_n):
            phi = start + k * np.pi / 2 + direction * speed * t
            cy, cx = cy0 + radius * np.sin(phi), cx0 + radius * np.cos(phi)
            prof, inside = _soft_ellipse(yy, xx, cy, cx, ry, rx, angle0 + spin * t)
            signal[t] = np.maximum(signal[t], brightness * prof)
            labels[t][inside] = k + 1

    # The dividing cell: one round cell that pinches into two daughters (frames 8 to 16),
    # which then drift apart.
    axis = rng.uniform(0, np.pi)
    uy, ux = np.sin(axis), np.cos(axis)
    brightness = rng.uniform(320, 420)
    for t in range(t_n):
        s = np.clip((t - 8) / 8.0, 0.0, 1.0)
        smooth = s * s * (3 - 2 * s)
        offset = 12.0 * smooth + 0.3 * max(t - 16, 0)
        radius = 9.5 - 2.5 * smooth
        parts = []
        for sign in (-1.0, 1.0):
            prof, inside = _soft_ellipse(
                yy, xx, cy0 + sign * offset * uy, cx0 + sign * offset * ux,
                radius, radius * 1.08, axis,
            )
            signal[t] = np.maximum(signal[t], brightness * prof)
            parts.append(inside)
        if offset > radius + 0.75:  # the daughters no longer touch
            labels[t][parts[0]] = DIVIDING_CELL
            labels[t][parts[1]] = DIVIDING_CELL + 1
        else:
            labels[t][parts[0] | parts[1]] = DIVIDING_CELL

    bleaching = (1.0 - 0.012 * np.arange(t_n, dtype=np.float32))[:, None, None]
    expected = (120.0 + signal) * illum[None] * bleaching
    image = _camera(rng, expected, offset=100.0, read_noise=3.0)
    return (image, labels) if return_labels else image


def make_zstack(
    seed: int = 0, *, return_labels: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A 32×128×128 ``uint16`` z-stack (Z×Y×X) of about a dozen ellipsoidal nuclei.

    Args:
        seed: random seed; the same seed gives an identical array.
        return_labels: also return the Z×Y×X ``uint16`` ground truth (nuclei labelled 1..N).

    Returns:
        The image, or ``(image, labels)``.
    """
    rng = np.random.default_rng(seed)
    d, h, w = 32, 128, 128
    signal = np.zeros((d, h, w), np.float32)
    labels = np.zeros((d, h, w), np.uint16)
    centres: list[tuple[float, float, float, float]] = []
    attempts = 0
    while len(centres) < 12 and attempts < 500:
        attempts += 1
        rz, rxy = rng.uniform(4.5, 7.0), rng.uniform(8.0, 12.0)
        cz, cy, cx = rng.uniform(8, d - 8), rng.uniform(14, h - 14), rng.uniform(14, w - 14)
        if all(
            (cy - oy) ** 2 + (cx - ox) ** 2 > (rxy + orxy + 3) ** 2
            or abs(cz - oz) > 1.6 * (rz + 6)
            for oz, oy, ox, orxy in centres
        ):
            centres.append((cz, cy, cx, rxy))
            elong = rng.uniform(0.75, 1.0)
            angle = rng.uniform(0, np.pi)
            brightness = rng.uniform(500, 900)
            z0, z1 = max(int(cz - rz - 4), 0), min(int(cz + rz + 5), d)
            y0, y1 = max(int(cy - rxy - 4), 0), min(int(cy + rxy + 5), h)
            x0, x1 = max(int(cx - rxy - 4), 0), min(int(cx + rxy + 5), w)
            zz, yy, xx = np.mgrid[z0:z1, y0:y1, x0:x1].astype(np.float32)
            c, s = np.cos(angle), np.sin(angle)
            dy, dx = yy - cy, xx - cx
            u, v = (dx * c + dy * s) / rxy, (-dx * s + dy * c) / (rxy * elong)
            r = np.sqrt(u * u + v * v + ((zz - cz) / rz) ** 2)
            # A wider ramp than in x/y: the axial blur of a widefield microscope.
            prof = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * 6.0, -30, 30)))
            box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
            signal[box] = np.maximum(signal[box], brightness * prof)
            labels[box][r <= 1.0] = len(centres)
    depth = np.exp(-np.arange(d, dtype=np.float32) / 60.0)[:, None, None]
    illum = _illumination(h, w, h * 0.45 + rng.uniform(-10, 10), w * 0.4, 70.0)[None]
    expected = (100.0 + signal) * depth * illum
    image = _camera(rng, expected, offset=100.0, read_noise=4.0)
    return (image, labels) if return_labels else image


def _limits(image: np.ndarray) -> list[float]:
    low, high = np.percentile(image, (0.5, 99.8))
    return [float(low), float(high)]


def timelapse_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari sample: the dividing-cell time-lapse (T×Y×X, ``uint16``)."""
    image = make_timelapse()
    meta = {"name": "SAM2 time-lapse", "contrast_limits": _limits(image), "colormap": "gray"}
    return [(image, meta, "image")]


def zstack_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari sample: the nuclei z-stack (Z×Y×X, ``uint16``)."""
    image = make_zstack()
    meta = {"name": "SAM2 z-stack", "contrast_limits": _limits(image), "colormap": "gray"}
    return [(image, meta, "image")]
