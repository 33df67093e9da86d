"""Image predictor speed, ours against the reference SAM 2 on the same random weights.

    python benchmarks/image_predictor.py [--config sam2.1_hiera_t] [--image-size 1024]

Prints the median time of ``set_image`` (image encoder + preprocessing) and of one
``predict`` call with a click on an encoded image, and the ratio ours / reference.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import describe_machine, median_time, paired_models, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from sam2.sam2_image_predictor import SAM2ImagePredictor as RefPredictor

    from napari_sam2.core.image_predictor import SAM2ImagePredictor

    ref_model, our_model = paired_models(args.config, args.image_size)
    ref, ours = RefPredictor(ref_model), SAM2ImagePredictor(our_model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    click = dict(point_coords=np.array([[500.0, 400.0]]), point_labels=np.array([1]))

    rows = []
    with torch.inference_mode():
        t_ours = median_time(lambda: ours.set_image(image), args.repeats)
        t_ref = median_time(lambda: ref.set_image(image), args.repeats)
        rows.append((f"set_image {image.shape[1]}×{image.shape[0]}", t_ours, t_ref))
        a = ours.predict(**click, multimask_output=True)
        b = ref.predict(**click, multimask_output=True)
        max_diff = float(np.abs(a[1] - b[1]).max())
        c_ours = median_time(lambda: ours.predict(**click), args.repeats * 5)
        c_ref = median_time(lambda: ref.predict(**click), args.repeats * 5)
        rows.append(("predict, one click", c_ours, c_ref))
    print(f"{args.config} at image_size {args.image_size}; {describe_machine()}")
    print_table(rows)
    print(f"IoU-score max abs diff between the two: {max_diff:.2e}")


if __name__ == "__main__":
    main()
