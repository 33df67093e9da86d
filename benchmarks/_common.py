"""Helpers shared by the benchmark scripts: build ours and the reference on the same weights,
time callables, print ratio tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def paired_models(config: str = "sam2.1_hiera_t", image_size: int = 1024, seed: int = 0):
    """(reference, ours) SAM 2 networks with the same random weights, eval mode, CPU."""
    from sam2.build_sam import build_sam2

    from napari_sam2.models.build import build_model

    folder = "sam2.1" if config.startswith("sam2.1") else "sam2"
    torch.manual_seed(seed)
    ref = build_sam2(
        f"configs/{folder}/{config}.yaml",
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={image_size}"],
    ).eval()
    ours = build_model(config, image_size=image_size)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(rows: list[tuple[str, float, float]], unit: str = "s") -> None:
    """Rows of (what, ours, reference) -> a Markdown table with the ours/reference ratio."""
    print(f"| measurement | ours ({unit}) | reference ({unit}) | ours / reference |")
    print("| --- | ---: | ---: | ---: |")
    for name, ours, ref in rows:
        print(f"| {name} | {ours:.4f} | {ref:.4f} | {ours / ref:.2f} |")


def describe_machine() -> str:
    import os
    import platform

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
