"""Helpers shared by the benchmark scripts: build ours and the reference on the same weights,
time callables, print ratio tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def paired_models(config: str = "sam2.1_hiera_t", image_size: int = 1024, seed: int = 0):
    """(reference, ours) SAM 2 networks with the same random weights (made realistic, see
    :func:`realistic_weights`), eval mode, CPU."""
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
    realistic_weights(ref)
    ours = build_model(config, image_size=image_size)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def realistic_weights(model: torch.nn.Module) -> None:
    """Give random weights a trained model's logit size (the mask hypernetworks' last layers
    ×20) and present objects (presence bias +10), so that the agreement figures mean
    something: raw random weights give logits of about ±0.5, or no object at all."""
    decoder = model.sam_mask_decoder
    with torch.no_grad():
        decoder.pred_obj_score_head.layers[-1].bias += 10.0
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 20.0
            mlp.layers[-1].bias *= 20.0


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


_peaks: dict[str, float] = {}


def machine_peaks() -> dict[str, float]:
    """This machine's measured float32 and bfloat16 matrix-product rates, GFLOP/s: the best of
    a few square and Hiera-like shapes (the roofline the shares of peak are taken against)."""
    if not _peaks:
        shapes = [(2048, 2048, 2048), (4096, 384, 1536), (16384, 192, 768)]
        gen = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                best = 0.0
                for m, k, n in shapes:
                    a = torch.randn(m, k, generator=gen).to(dtype)
                    b = torch.randn(k, n, generator=gen).to(dtype)
                    start = time.perf_counter()
                    a @ b  # a CPU without bfloat16 units emulates it ~100x slower: time once
                    once = time.perf_counter() - start
                    t = once if once > 0.5 else median_time(lambda a=a, b=b: a @ b, repeats=5)
                    best = max(best, 2 * m * k * n / t / 1e9)
                _peaks[name] = best
    return _peaks


def describe_machine() -> str:
    """CPU, its ISA, torch, threads, the measured product peaks and what ``auto`` picks."""
    import os

    from napari_sam2.models.precision_policy import cpu_info, resolve_precision

    peaks = machine_peaks()
    return (
        f"CPU: {cpu_info().describe()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
        f"measured product peak: float32 {peaks['fp32']:.0f} GFLOP/s, bfloat16 "
        f"{peaks['bf16']:.0f} GFLOP/s; precision auto -> "
        f"{resolve_precision('auto', 'cpu').describe()}"
    )


def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, nq, d = q_shape
    return 2 * b * h * nq * k_shape[-2] * (d + v_shape[-1])


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of matrix products, convolutions and attention done by ``fn()`` (torch's flop
    counter, plus the CPU's fused attention kernel, which it does not know)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def peak_for(precision: str) -> float:
    """The product peak (GFLOP/s) a run in ``precision`` is measured against."""
    from napari_sam2.models.precision_policy import resolve_precision

    mode = resolve_precision(precision, "cpu").mode
    return machine_peaks()["bf16" if mode == "bf16" else "fp32"]


def print_roofline_table(rows: list[tuple[str, float, float, float, float]]) -> None:
    """Rows of (what, ours s, reference s, GFLOP ours did, peak GFLOP/s it runs against):
    ours / reference, the share of peak ours reaches, and the time at peak."""
    print("| measurement | ours (s) | reference (s) | ours / reference | GFLOP | "
          "share of peak | s at peak | at peak / reference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, ours, ref, gflop, peak in rows:
        at_peak = gflop / peak
        print(f"| {name} | {ours:.4f} | {ref:.4f} | {ours / ref:.2f} | {gflop:.1f} | "
              f"{gflop / ours / peak:.0%} | {at_peak:.4f} | {at_peak / ref:.2f} |")
