"""Image predictor speed, ours against the reference SAM 2 on the same random weights.

    python benchmarks/image_predictor.py [--config sam2.1_hiera_t] [--image-size 1024]
        [--repeats 3] [--precision auto fp32]

Prints the machine (CPU, ISA, torch, measured product peaks), then median times of the image
encoder (``forward_image`` on a model-size tensor), of ``set_image`` (preprocessing +
encoder) and of one ``predict`` call with a click on an encoded image, ours in each
``--precision`` mode against the reference in float32 (as a CPU user of the reference gets
it): the ratio ours / reference, the GFLOP ours does, the share of the machine's product peak
it reaches and the time it would take at that peak; and how far ours' mask logits are from
the reference's.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import (
    count_gflop,
    describe_machine,
    median_time,
    paired_models,
    peak_for,
    print_roofline_table,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["auto", "fp32"],
                        choices=["auto", "fp32", "fast", "bf16"], help="our precision mode(s)")
    args = parser.parse_args()

    from sam2.sam2_image_predictor import SAM2ImagePredictor as RefPredictor

    from napari_sam2.core.image.predictor import SAM2ImagePredictor
    from napari_sam2.models.precision import set_precision

    ref_model, our_model = paired_models(args.config, args.image_size)
    ref = RefPredictor(ref_model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    x = torch.randn(
        1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0)
    )
    click = dict(point_coords=np.array([[500.0, 400.0]]), point_labels=np.array([1]))

    rows, notes = [], []
    with torch.inference_mode():
        enc_ref = median_time(lambda: ref_model.forward_image(x), args.repeats)
        set_ref = median_time(lambda: ref.set_image(image), args.repeats)
        click_ref = median_time(lambda: ref.predict(**click), args.repeats * 5)
        ref_out = ref.predict(**click, multimask_output=True, return_logits=True)
        gflop_enc = count_gflop(lambda: our_model.forward_image(x))
        gflop_click = None
        for precision in args.precision:
            ours = SAM2ImagePredictor(set_precision(our_model, precision), store=False)
            mode = our_model.precision
            peak = peak_for(precision)
            tag = f"{precision} -> {mode}" if precision == "auto" else precision
            enc = median_time(lambda: our_model.forward_image(x), args.repeats)
            rows.append((f"image encoder ({tag})", enc, enc_ref, gflop_enc, peak))
            rows.append((f"set_image {image.shape[1]}×{image.shape[0]} ({tag})",
                         median_time(lambda ours=ours: ours.set_image(image), args.repeats),
                         set_ref, gflop_enc, peak))
            if gflop_click is None:
                ours.predict(**click)  # the image's first-block projections are now kept
                gflop_click = count_gflop(lambda ours=ours: ours.predict(**click))
            rows.append((f"predict, one click ({tag})",
                         median_time(lambda ours=ours: ours.predict(**click), args.repeats * 5),
                         click_ref, gflop_click, peak))
            out = ours.predict(**click, multimask_output=True, return_logits=True)
            same = float(((out[0] > 0) == (ref_out[0] > 0)).mean())
            notes.append(f"{precision}: max |logit| diff {np.abs(out[0] - ref_out[0]).max():.2e}, "
                         f"IoU-score diff {np.abs(out[1] - ref_out[1]).max():.2e}, "
                         f"same mask pixels {same:.5f}")
    print(describe_machine())
    print(f"{args.config} at image_size {args.image_size}")
    print_roofline_table(rows)
    print("\n".join(notes))


if __name__ == "__main__":
    main()
