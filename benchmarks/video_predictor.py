"""Video predictor speed and memory, ours against the reference SAM 2 on the same random weights.

    python benchmarks/video_predictor.py [--config sam2.1_hiera_t] [--image-size 1024]
        [--frames 16] [--objects 1 4 8] [--precision auto fp32] [--no-flops]
        [--long-frames 300] [--long-image-size 256] [--long-frame-size N] [--long-uint16]
        [--skip-speed] [--skip-rss] [--no-reference-rss] [--threads N]

1. Speed: seconds per frame of ``propagate_in_video`` over ``--frames`` synthetic frames for
   each number of clicked objects (frame reading, preprocessing, encoding and tracking; both
   predictors read frames lazily here, hole filling off on both); then a correction click on
   the middle frame and a propagation from there (ours re-encodes only frames no longer in
   its feature cache; the reference re-encodes every frame). Ours runs in each
   ``--precision`` mode; printed per mode: the largest logit difference to the reference, the
   fraction of mask pixels that agree, and how many frames ours encoded. Unless
   ``--no-flops``, one more run of ours counts the GFLOP it does per frame, and the table
   gives the share of the machine's product peak ours reaches and the time at that peak.
2. Memory: resident memory (RSS) while tracking one object through ``--long-frames`` frames, in
   a fresh process per predictor. Our frames come from a lazy array-like (as from a TIFF on
   disk); the reference is fed the way its loader works, all frames preloaded as float32 at the
   model size. Printed: RSS growth per frame (slope over the second half) and peak RSS.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import torch
from _common import (
    count_gflop,
    describe_machine,
    peak_for,
    print_roofline_table,
    realistic_weights,
)


class SyntheticStack:
    """Lazy stack, each frame made when read: a moving disc on noise. ``T×H×W×3`` uint8, or
    with ``grey16`` ``T×H×W`` uint16 (a microscopy-like 12-bit range)."""

    def __init__(self, n: int, size: int, grey16: bool = False) -> None:
        self.size, self.grey16 = size, grey16
        self.shape = (n, size, size) if grey16 else (n, size, size, 3)
        self.dtype = np.dtype(np.uint16 if grey16 else np.uint8)

    def frame(self, t: int) -> np.ndarray:
        s = self.size
        yy, xx = np.ogrid[:s, :s]
        cx, cy, r = s * (0.3 + 0.4 * ((t % 50) / 50)), s * 0.5, s * 0.1
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        if self.grey16:
            img = np.random.default_rng(t).integers(100, 400, (s, s), dtype=np.uint16)
            img[disc] = 3000
            return img
        img = np.random.default_rng(t).integers(0, 40, (s, s, 3), dtype=np.uint8)
        img[disc] = (220, 60, 60)
        return img

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.frame(int(key[0]))[key[1:]]


def clicks(n_objects: int, size: int) -> list[list[float]]:
    return [[size * (0.2 + 0.6 * i / max(n_objects - 1, 1)), size * 0.5] for i in range(n_objects)]


def build(
    config: str, image_size: int, which: str = "both", seed: int = 0, precision: str = "auto"
):
    """(reference video predictor, our predictor) on the same random weights (made
    realistic: objects present, trained-size logits); ``which`` =
    ``"ours"`` / ``"reference"`` builds only that one (the other is ``None``)."""
    from sam2.build_sam import build_sam2_video_predictor

    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    from napari_sam2.models.build import build_model

    folder = "sam2.1" if config.startswith("sam2.1") else "sam2"
    torch.manual_seed(seed)
    ref = ours = None
    if which != "ours":
        ref = build_sam2_video_predictor(
            f"configs/{folder}/{config}.yaml", ckpt_path=None, device="cpu",
            hydra_overrides_extra=[f"++model.image_size={image_size}"],
        ).eval()
        ref.fill_hole_area = 0  # its hole filling needs a CUDA extension; compare the same work
        realistic_weights(ref)
    if which != "reference":
        model = build_model(config, image_size=image_size, video=True, precision=precision)
        if ref is not None:
            model.load_state_dict(ref.state_dict(), strict=True)
        else:
            realistic_weights(model)
        ours = SAM2VideoPredictor(model.eval(), fill_hole_area=0)
    return ref, ours


def reference_loader(stack: SyntheticStack, image_size: int, preload: bool):
    """Replacement for the reference's frame loader: the same frames through our video resize
    (which is its JPEG loader's), preloaded as float32 (as that loader does) or lazy."""
    import sam2.sam2_video_predictor as svp

    from napari_sam2.core.stacks.model_input import video_frame_to_tensor

    class Lazy:
        def __len__(self):
            return stack.shape[0]

        def __getitem__(self, t):
            return video_frame_to_tensor(stack.frame(t), image_size)

    def load(**kwargs):
        frames = Lazy()
        if preload:  # like its JPEG loader: one preallocated tensor, filled frame by frame
            images = torch.zeros(len(frames), 3, image_size, image_size)
            for t in range(len(frames)):
                images[t] = frames[t]
            frames = images
        return frames, stack.shape[1], stack.shape[2]

    return mock.patch.object(svp, "load_video_frames", load)


def _track(predictor, state, n_obj: int, size: int, frames: int, flops: bool = False) -> dict:
    """Click ``n_obj`` objects on frame 0 and propagate; then a correction click on the middle
    frame and a propagation from there. Returns timings (or, with ``flops``, GFLOP per
    frame) and masks."""
    for i, xy in enumerate(clicks(n_obj, size)):
        predictor.add_new_points_or_box(state, 0, i + 1, points=[xy], labels=[1])
    masks: list = []
    again: list = []
    mid = frames // 2
    x, y = clicks(n_obj, size)[0]

    def first_pass():
        masks.extend(m for _, _, m in predictor.propagate_in_video(state))

    def second_pass():
        predictor.add_new_points_or_box(state, mid, 1, points=[[x + size * 0.02, y]], labels=[1])
        again.extend(m for _, _, m in predictor.propagate_in_video(state, start_frame_idx=mid))

    measure = count_gflop if flops else _seconds
    first = measure(first_pass) / frames
    second = measure(second_pass) / (frames - mid)
    return {"first": first, "again": second, "masks": masks + again}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """(max |logit| difference, fraction of mask pixels with the same sign)."""
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    same = sum(((x > 0) == (y > 0)).sum().item() for x, y in zip(a, b))
    return diff, same / sum(x.numel() for x in a)


def speed(args) -> None:
    import sam2.sam2_video_predictor as svp

    ref, _ = build(args.config, args.image_size, which="reference")
    stack = SyntheticStack(args.frames, args.image_size)
    rows, notes = [], []
    with mock.patch.object(svp, "tqdm", lambda it, **kw: it), torch.inference_mode():
        for n_obj in args.objects:
            with reference_loader(stack, args.image_size, preload=False):
                ref_state = ref.init_state("unused")
            theirs = _track(ref, ref_state, n_obj, args.image_size, args.frames)
            gflop = None
            for precision in args.precision:
                _, ours = build(args.config, args.image_size, which="ours", precision=precision)
                ours.model.load_state_dict(ref.state_dict())
                calls = []
                forward = ours.model.forward_image
                ours.model.forward_image = lambda x, _f=forward, _c=calls: _c.append(1) or _f(x)
                with ours.init_state(stack) as state:
                    mine = _track(ours, state, n_obj, args.image_size, args.frames)
                    cached = len(state.feature_cache)
                encoded = len(calls)
                if gflop is None and args.flops:
                    with ours.init_state(stack) as state:
                        gflop = _track(ours, state, n_obj, args.image_size, args.frames, True)
                diff, same = _agreement(mine["masks"], theirs["masks"])
                mode = ours.model.precision
                tag = f"{n_obj} object(s), {precision}" + (
                    f" -> {mode}" if precision == "auto" else "")
                peak = peak_for(precision)
                g_first = gflop["first"] if gflop else float("nan")
                g_again = gflop["again"] if gflop else float("nan")
                rows.append((f"propagate, {tag}, s/frame", mine["first"], theirs["first"],
                             g_first, peak))
                rows.append((f"re-propagate after a correction, {tag}, s/frame",
                             mine["again"], theirs["again"], g_again, peak))
                notes.append(f"{tag}: max |logit| diff {diff:.2e}, same mask sign {same:.5f}; "
                             f"ours encoded {encoded} frames for {args.frames} "
                             f"(+{args.frames - args.frames // 2} re-propagated; "
                             f"{cached} cached at the end)")
    print(f"\n{describe_machine()}\n{args.config} at image_size {args.image_size}, "
          f"{args.frames} frames")
    print_roofline_table(rows)
    print("\n".join(notes))


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory of this process (``VmRSS``), or its peak (``VmHWM``), in MiB (Linux).
    Free heap pages are handed back to the OS first (glibc ``malloc_trim``), so that RSS follows
    live memory rather than the allocator's caches."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def rss_worker(which: str, config: str, image_size: int, n: int, frame_size: int,
               grey16: bool) -> dict:
    """Track one object through ``n`` frames; RSS samples (MiB) every 10 frames."""
    import sam2.sam2_video_predictor as svp

    ref, ours = build(config, image_size, which)
    predictor = ours if which == "ours" else ref
    stack = SyntheticStack(n, frame_size, grey16=grey16)
    samples = []
    with mock.patch.object(svp, "tqdm", lambda it, **kw: it), torch.inference_mode():
        before = rss_mib()
        if which == "ours":
            state = predictor.init_state(stack)
        else:
            with reference_loader(stack, image_size, preload=True):
                state = predictor.init_state("unused")
        predictor.add_new_points_or_box(state, 0, 1, points=clicks(1, frame_size), labels=[1])
        start = time.perf_counter()
        for t, _, _ in predictor.propagate_in_video(state):
            if t % 10 == 0 or t == n - 1:
                samples.append((t, rss_mib()))
        elapsed = time.perf_counter() - start
    half = [s for s in samples if s[0] >= n // 2]  # past the start-up allocations
    slope = np.polyfit([t for t, _ in half], [r for _, r in half], 1)[0] if len(half) > 1 else 0.0
    return {
        "which": which, "before_state_mib": before, "after_prompt_mib": samples[0][1],
        "end_mib": samples[-1][1], "growth_kib_per_frame": slope * 1024,
        "peak_mib": rss_mib("VmHWM"),  # ru_maxrss would include the parent's, inherited
        "s_per_frame": elapsed / n,
        "spilled": getattr(getattr(state, "results", None), "spilled_count", lambda: None)(),
    }


def memory(args) -> None:
    results = {}
    for which in ("ours", "reference") if args.reference_rss else ("ours",):
        cmd = [sys.executable, __file__, "--rss-worker", which, "--config", args.config,
               "--long-image-size", str(args.long_image_size), "--long-frames",
               str(args.long_frames), "--long-frame-size", str(args.long_frame_size or
               args.long_image_size)] + (["--long-uint16"] if args.long_uint16 else []) + (
               [f"--threads={args.threads}"] if args.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[which] = json.loads(out.strip().splitlines()[-1])
    size = args.long_frame_size or args.long_image_size
    kind = "uint16 grey" if args.long_uint16 else "uint8 RGB"
    print(f"\nOne object through {args.long_frames} {kind} frames of {size}×{size} at "
          f"image_size {args.long_image_size} ({args.config}), a fresh process each:")
    print("| predictor | RSS with model (MiB) | + after prompt | + at end | growth (KiB/frame) | "
          "peak RSS (MiB) | s/frame |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for which, r in results.items():
        base = r["before_state_mib"]
        print(f"| {which} | {base:.0f} | {r['after_prompt_mib'] - base:+.0f} | "
              f"{r['end_mib'] - base:+.0f} | {r['growth_kib_per_frame']:.1f} | "
              f"{r['peak_mib']:.0f} | {r['s_per_frame']:.3f} |")
    if "ours" in results:
        print(f"ours: {results['ours']['spilled']} results spilled to disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--precision", nargs="+", default=["auto", "fp32"],
                        choices=["auto", "fp32", "fast", "bf16"], help="our precision mode(s)")
    parser.add_argument("--no-flops", dest="flops", action="store_false",
                        help="do not count ours' GFLOP per frame (one run less)")
    parser.add_argument("--long-frames", type=int, default=300)
    parser.add_argument("--long-image-size", type=int, default=256)
    parser.add_argument("--long-frame-size", type=int, default=None,
                        help="frame size of the long stack (default: the image size)")
    parser.add_argument("--long-uint16", action="store_true", help="uint16 grey frames")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--no-reference-rss", dest="reference_rss", action="store_false")
    parser.add_argument("--rss-worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_worker:
        result = rss_worker(args.rss_worker, args.config, args.long_image_size, args.long_frames,
                            args.long_frame_size or args.long_image_size, args.long_uint16)
        print(json.dumps(result))
        return
    if not args.skip_speed:
        speed(args)
    if not args.skip_rss:
        memory(args)


if __name__ == "__main__":
    main()
