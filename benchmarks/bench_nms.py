#!/usr/bin/env python3
"""The NumPy NMS plugins (nms_reference.py) against their plain first form, on D0-sized heads.

Both run on the same random heads (49,104 anchors x 90 classes, D0 at 512;
tests/helpers.random_heads) at score thresholds 0, 0.001 and 0.4; the plain
form is tests/nms_loop_oracle.py, the implementation before issue 14 (a full
stable sort of every candidate, a Python loop over every box). Prints seconds
per image side by side and whether the outputs are bit-identical.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import nms_loop_oracle  # noqa: E402
import numpy as np  # noqa: E402
from helpers import random_heads  # noqa: E402

from efficientdet_trt.run import nms_reference  # noqa: E402


def per_image(function, images, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best / images, result


def identical(a, b):
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images per batch (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast form; best kept (default: 3)")
    parser.add_argument("--skip_batched", action="store_true", help="time EfficientNMS_TRT only")
    args = parser.parse_args()

    boxes, logits, anchors = random_heads(batch=args.images, classes=90)
    decoded = nms_reference.decode_center_size(boxes, anchors)[:, :, None, :]
    scores = nms_reference.sigmoid(logits)
    print(f"heads: {args.images} images x {boxes.shape[1]} anchors x {logits.shape[2]} classes; s/image, best of "
          f"{args.repeats} (plain form: 1 run)")
    print(f"{'plugin':<16}{'threshold':>10}{'plain loop':>12}{'now':>10}{'speed-up':>10}  identical")
    cases = [("EfficientNMS_TRT", nms_reference.EfficientNMSParams,
              lambda module, params: module.efficient_nms(boxes, logits, anchors, params))]
    if not args.skip_batched:
        cases.append(("BatchedNMS_TRT", lambda **kw: nms_reference.BatchedNMSParams(num_classes=90, is_normalized=False,
                                                                                   **kw),
                      lambda module, params: module.batched_nms(decoded, scores, params)))
    for plugin, make_params, run in cases:
        for threshold in (0.0, 0.001, 0.4):
            params = make_params(score_threshold=threshold, iou_threshold=0.5)
            old, old_out = per_image(lambda: run(nms_loop_oracle, params), args.images, 1)
            new, new_out = per_image(lambda: run(nms_reference, params), args.images, args.repeats)
            print(f"{plugin:<16}{threshold:>10}{old:>12.3f}{new:>10.3f}{old / new:>9.0f}x  "
                  f"{identical(old_out, new_out)}")

if __name__ == "__main__":
    main()
