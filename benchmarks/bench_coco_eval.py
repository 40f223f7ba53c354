#!/usr/bin/env python3
"""Time eval_coco's evaluation against a plain pycocotools run on the same synthetic data.

A COCO-like ground truth (default 5,000 images, ~7 objects each, 80 sparse
category ids) and 100 detections per image (noisy copies of the objects plus
random boxes) are generated; then both are evaluated by
- plain pycocotools: COCO(annotations file), loadRes(results file), COCOeval bbox;
- this project: coco_eval.load_annotations + coco_eval.evaluate (what eval_coco.py runs,
  with faster-coco-eval when installed, else pycocotools).
Prints both wall times (best of --repeats), their ratio, and checks the 12 numbers agree.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from efficientdet_trt.evaluate import coco as coco_eval  # noqa: E402


def synthesize(num_images, detections_per_image, seed=0):
    rng = np.random.default_rng(seed)
    category_ids = sorted(rng.choice(np.arange(1, 91), size=80, replace=False).tolist())
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = 640, 480
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        objects = []
        for _ in range(rng.integers(1, 14)):
            w, h = rng.uniform(10, 300), rng.uniform(10, 300)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.choice(category_ids))
            objects.append((x, y, w, h, category))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for k in range(detections_per_image):
            if k < len(objects) * 3:
                x, y, w, h, category = objects[k % len(objects)]
                x, y = x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h)
            else:
                w, h = rng.uniform(10, 300), rng.uniform(10, 300)
                x, y, category = rng.uniform(0, width - w), rng.uniform(0, height - h), int(rng.choice(category_ids))
            results.append({"image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                            "score": float(rng.uniform(0.01, 1.0))})
    categories = [{"id": c, "name": f"class{c}"} for c in category_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def plain_pycocotools(annotations_path, results_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations_path)
        dt = gt.loadRes(results_path)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def ours(annotations_path, results):
    gt = coco_eval.load_annotations(annotations_path)
    ids = [image["id"] for image in gt.dataset["images"]]
    return coco_eval.evaluate(gt, results, ids).stats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs")
    args = parser.parse_args()
    data, results = synthesize(args.images, args.detections)
    with tempfile.TemporaryDirectory() as tmp:
        annotations_path, results_path = os.path.join(tmp, "gt.json"), os.path.join(tmp, "dt.json")
        with open(annotations_path, "w") as handle:
            json.dump(data, handle)
        with open(results_path, "w") as handle:
            json.dump(results, handle)
        plain_s = ours_s = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            direct = plain_pycocotools(annotations_path, results_path)
            plain_s = min(plain_s, time.perf_counter() - start)
            start = time.perf_counter()
            mine = ours(annotations_path, results)
            ours_s = min(ours_s, time.perf_counter() - start)
    print(f"{args.images} images, {len(data['annotations'])} objects, {len(results)} detections")
    print(f"plain pycocotools: {plain_s:.1f} s | eval_coco ({coco_eval.evaluation_backend()}): {ours_s:.1f} s | "
          f"ratio {ours_s / plain_s:.2f}")
    print(f"same 12 numbers: {bool(np.allclose(direct, mine, atol=1e-12))}; AP {mine[0]:.4f}, AP50 {mine[1]:.4f}")


if __name__ == "__main__":
    main()
