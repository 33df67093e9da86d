"""The embedding store: what reopening a stored stack saves, and what a stored frame costs.

    python benchmarks/embedding_store.py [--image-sizes 512 1024] [--frames 100]
        [--precision auto fp32] [--codecs blosc-zstd blosc-lz4 zstd none] [--threads N]

Ours alone (the reference has no store), tiny model with random weights:

1. Per image size and precision: each codec's bytes per frame, and the time to read one
   frame's features back (median of all frames) against the time to encode one.
2. "Reopen and click": a fresh predictor on a ``--frames`` stack whose store exists, one click
   on the middle frame: time to the first mask, against the same with an empty store.
3. Propagation over the stored stack (one object, all frames): s/frame against an empty store.

Prints the machine (CPU, ISA, threads, torch) first.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, realistic_weights

from napari_sam2.core.store.embedding_store import CODECS, EmbeddingStore, folder_size
from napari_sam2.core.video.precompute import precompute
from napari_sam2.core.video.predictor import SAM2VideoPredictor
from napari_sam2.models.build import build_model


def stack(n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.integers(100, 400, size=(n, size, size)).astype(np.uint16)
    for t in range(n):
        data[t, size // 3 : size // 2, size // 4 + t % 20 : size // 2 + t % 20] += 3000
    return data


def click(predictor, data, store, frame: int) -> float:
    t0 = time.perf_counter()
    state = predictor.init_state(data, store=store)
    predictor.add_new_points_or_box(state, frame, 1, points=[[data.shape[2] * 0.35,
                                                              data.shape[1] * 0.4]], labels=[1])
    elapsed = time.perf_counter() - t0
    state.close()
    return elapsed


def propagate(predictor, data, store) -> float:
    state = predictor.init_state(data, store=store)
    predictor.add_new_points_or_box(state, 0, 1, points=[[data.shape[2] * 0.35,
                                                          data.shape[1] * 0.4]], labels=[1])
    t0 = time.perf_counter()
    n = sum(1 for _ in predictor.propagate_in_video(state))
    elapsed = (time.perf_counter() - t0) / n
    state.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--frame-size", type=int, default=512)
    parser.add_argument("--precision", nargs="+", default=["auto", "fp32"])
    parser.add_argument("--codecs", nargs="+", default=list(CODECS))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_machine())
    root = Path(tempfile.mkdtemp(prefix="napari-sam2-bench-"))
    try:
        for size in args.image_sizes:
            for precision in args.precision:
                run(size, precision, args, root / f"{size}-{precision}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(size: int, precision: str, args: argparse.Namespace, folder: Path) -> None:
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_t", image_size=size, video=True, precision=precision)
    realistic_weights(model)
    data = stack(args.frames, args.frame_size)
    print(f"\n== tiny, image size {size}, precision {precision} -> {model.precision}, "
          f"{args.frames} frames of {args.frame_size}² uint16")
    predictor = SAM2VideoPredictor(model, feature_cache_size=1)

    # 1. codecs: size per frame, read time against encode time
    main_store = folder / "stack.zarr"
    encode_times: list[float] = []
    with predictor.init_state(data, store=main_store) as state:
        for _ in precompute(predictor, state, frame_range=(0, 0)):  # warm-up
            pass
        t_all = time.perf_counter()
        for _ in precompute(predictor, state):
            pass
        encode_times.append((time.perf_counter() - t_all) / max(1, args.frames - 1))
        levels = [t.clone() for t in predictor.encoder.features(state, 0).backbone_fpn]
    encode = encode_times[0]
    print(f"encode: {encode:.3f} s/frame (precompute, including the store write)")
    print(f"{'codec':12s} {'MB/frame':>9s} {'vs raw':>7s} {'read ms':>8s} {'read/encode':>12s}")
    raw = sum(t.numel() * t.element_size() for t in levels)
    from napari_sam2.core.store.key import StoreKey

    key = StoreKey(encoder={"weights": "bench"}, precision=model.precision, input="video",
                   normalization=None, frame_shape=(1,), num_frames=16)
    pos = ["float32"] * len(levels)
    sig = "1" * 32
    for codec in args.codecs:
        store = EmbeddingStore.open(folder / f"{codec}.zarr", key, codec=codec)
        for i in range(16):
            store.write(i, sig, levels, pos)
        size_frame = folder_size(store.variant) / 16
        reads = []
        for i in range(16):
            t0 = time.perf_counter()
            store.read(i, sig)
            reads.append(time.perf_counter() - t0)
        read = statistics.median(reads)
        print(f"{codec:12s} {size_frame / 1e6:9.2f} {size_frame / raw:7.2f} {read * 1e3:8.1f} "
              f"{read / encode:12.4f}")

    # 2. reopen and click: stored vs empty store
    middle = args.frames // 2
    empty = [click(predictor, data, folder / f"empty{i}.zarr", middle) for i in range(3)]
    stored = [click(predictor, data, main_store, middle) for _ in range(3)]
    t_empty, t_stored = statistics.median(empty), statistics.median(stored)
    print(f"reopen + click, time to first mask: empty store {t_empty:.3f} s, stored "
          f"{t_stored:.3f} s -> {t_stored / t_empty:.3f}x (target <= 0.05x)")

    # 3. propagation over the stored stack vs an empty store
    p_empty = propagate(predictor, data, folder / "empty-prop.zarr")
    p_stored = propagate(predictor, data, main_store)
    print(f"propagation, 1 object: empty store {p_empty:.3f} s/frame, stored {p_stored:.3f} "
          f"s/frame -> {p_stored / p_empty:.2f}x (target <= 0.6x)")


if __name__ == "__main__":
    main()
