"""Soak run: a long stack through the widget's session code, with a correction every
``--every`` frames, sampling the process's resident memory and open file handles.

    python benchmarks/soak.py [--frames 2000] [--every 200] [--image-size 256] [--threads N]

Ours alone, tiny model with random weights (objects present, trained-size logits). The stack
is generated frame by frame (never held whole), the embedding store lives in a temporary
folder, as the widget's would in the cache. Both curves should stay flat: the RAM window of
tracked results, the feature cache and the store keep memory bounded, and no file is left
open per frame. Prints the machine first, then one row per sample and the start, peak and end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, realistic_weights


class DriftingCell:
    """``T×H×W`` uint16 frames made on demand: a bright square drifting on noise."""

    def __init__(self, frames: int, size: int) -> None:
        self.shape, self.dtype, self.ndim = (frames, size, size), np.dtype(np.uint16), 3
        self.size = size

    def _centre(self, t: int) -> tuple[int, int]:
        s = self.size
        return (s // 2 + int(s / 5 * np.sin(t / 40)), s // 2 + int(s / 5 * np.cos(t / 55)))

    def __getitem__(self, key):
        t = int(key[0] if isinstance(key, tuple) else key)
        rng = np.random.default_rng(t)
        frame = rng.integers(100, 400, (self.size, self.size)).astype(np.uint16)
        y, x = self._centre(t)
        r = self.size // 10
        frame[y - r : y + r, x - r : x + r] += 3000
        return frame


def sample(process: psutil.Process) -> tuple[float, int]:
    """``(RSS in MiB, open file descriptors)``."""
    return process.memory_info().rss / 2**20, process.num_fds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_machine())
    folder = Path(tempfile.mkdtemp(prefix="napari-sam2-soak-"))
    os.environ["NAPARI_SAM2_EMBEDDINGS"] = str(folder)
    try:
        run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, folder: Path) -> None:
    from napari_sam2.core.annotations.frame_prompt import FramePrompt
    from napari_sam2.core.stacks.source import open_frames
    from napari_sam2.core.video.predictor import SAM2VideoPredictor
    from napari_sam2.models.build import build_model
    from napari_sam2.widgets._session import SegmentationSession

    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_t", image_size=args.image_size, video=True)
    realistic_weights(model)
    stack = DriftingCell(args.frames, 256)
    print(f"\n== tiny at {args.image_size} ({model.precision}), {args.frames} frames of 256² "
          f"uint16, a correction every {args.every} frames")
    session = SegmentationSession(SAM2VideoPredictor(model), open_frames(stack))
    process = psutil.Process()
    rows: list[tuple[int, float, int, float]] = []
    prompts: list[FramePrompt] = []
    t0 = time.perf_counter()
    done = 0
    for start in range(0, args.frames, args.every):
        y, x = stack._centre(start)
        prompts.append(FramePrompt(start, 1, np.array([[x, y]], np.float32),
                                   np.array([1], np.int32), None))
        changes, errors = session.set_prompts(prompts)
        assert not errors, errors
        for _ in session.apply(changes):
            pass
        last = min(start + args.every, args.frames) - 1
        for frame_idx, _ in session.propagate("forward", (start, last)):
            done += 1
            if done % 50 == 0 or done == 1:
                rss, fds = sample(process)
                rows.append((done, rss, fds, time.perf_counter() - t0))
                print(f"  frame {frame_idx:5d}  RSS {rss:8.1f} MiB  open fds {fds:4d}  "
                      f"{rows[-1][3]:7.1f} s", flush=True)
    elapsed = time.perf_counter() - t0
    rss, fds = sample(process)
    rows.append((done, rss, fds, elapsed))
    session.close()
    rss_all = [r[1] for r in rows]
    fds_all = [r[2] for r in rows]
    print(f"RSS MiB: start {rss_all[0]:.1f}, peak {max(rss_all):.1f}, end {rss_all[-1]:.1f}; "
          f"after frame {rows[min(2, len(rows) - 1)][0]}: {rss_all[min(2, len(rss_all) - 1)]:.1f}")
    print(f"open fds: start {fds_all[0]}, peak {max(fds_all)}, end {fds_all[-1]}")
    stored = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{done} frames in {elapsed:.0f} s ({elapsed / done:.3f} s/frame); "
          f"store on disk {stored / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
