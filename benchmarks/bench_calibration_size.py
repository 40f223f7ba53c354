#!/usr/bin/env python3
"""How many calibration images INT8 needs: agreement with FP32 per calibration-set size.

Calibrates the trained D0 test fixture (1600 steps on the synthetic shapes,
128x128) on 4, 8, ... images with the INT8 entropy (or min-max) method, as
build_engine.py does for TensorRT 11.x (quantize.calibrate, then Q/DQ), runs
FP32 and each INT8 graph in ONNX Runtime on the same held-out images, and
prints side by side: detections per image, the share of FP32's detections the
INT8 graph finds (same class, IoU >= 0.5) and their mean IoU. Each size is
calibrated on several disjoint image sets (--repeats) to show the spread.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))


def detect(path, folder, height, width):
    from efficientdet_trt.run.detections import split_batch
    from efficientdet_trt.run.onnx_runner import OnnxCpuRunner
    from image_batcher import ImageBatcher

    found = {}
    with OnnxCpuRunner(path) as runner:
        batcher = ImageBatcher(folder, (height, width), runner.input_layout, 8, runner.input_spec().dtype)
        for batch, infos in batcher:
            outputs = runner.infer({runner.input_spec().name: batch})
            for info, detections in zip(infos, split_batch(outputs, infos)):
                found[os.path.basename(info.path)] = detections
    return found


def agreement(reference, ours):
    from efficientdet_trt.run.detections import match_detections

    total = matched = 0
    ious, counts = [], []
    for name, truth in reference.items():
        matches, iou = match_detections(truth, ours[name])
        total += len(truth)
        matched += int((matches >= 0).sum())
        ious.extend(iou[matches >= 0])
        counts.append(len(ours[name]))
    return matched / max(total, 1), float(np.mean(ious)) if ious else 0.0, float(np.mean(counts))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--fixture", default="d0_trained", help="test fixture name (see tests/conftest.py MODELS)")
    parser.add_argument("--saved_model", help="an AutoML SavedModel to use instead of the fixture (e.g. make demo's; "
                        "held-out and calibration images are synthetic shapes at its input size)")
    parser.add_argument("--sizes", default="4,8,16,32,64,128", help="calibration set sizes")
    parser.add_argument("--repeats", type=int, default=3, help="disjoint calibration sets per size")
    parser.add_argument("--held_out", type=int, default=64, help="images the graphs are compared on")
    parser.add_argument("--method", default="entropy", choices=("entropy", "minmax"), help="calibration method")
    args = parser.parse_args()

    import onnx
    from conftest import saved_model_path
    from synthetic_images import write_images

    from efficientdet_trt.convert import pipeline
    from efficientdet_trt.precision import quantize
    from efficientdet_trt.run.onnx_runner import onnx_input_shape
    from efficientdet_trt.run.runner import image_layout
    from image_batcher import ImageBatcher

    converted = pipeline.convert_saved_model(args.saved_model or saved_model_path(args.fixture))
    model = pipeline.build_graph(converted)
    layout, (height, width) = image_layout(onnx_input_shape(model), "the graph")
    names = quantize.activation_names(model)
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as work:
        fp32_path = os.path.join(work, "fp32.onnx")
        onnx.save(model, fp32_path)
        held_out = os.path.join(work, "held_out")
        write_images(held_out, args.held_out, width, height, seed=90000)
        reference = detect(fp32_path, held_out, height, width)
        print(f"{args.saved_model or args.fixture} ({height}x{width}), {args.method} calibration, "
              f"{len(names)} activation tensors; "
              f"compared on {args.held_out} held-out images, FP32 "
              f"{np.mean([len(d) for d in reference.values()]):.2f} detections per image")
        print(f"{'images':>6} | {'set':>3} | {'detections/image':>16} | {'FP32 found':>10} | {'mean IoU':>8}")
        for size in sizes:
            for repeat in range(args.repeats):
                folder = os.path.join(work, f"calib_{size}_{repeat}")
                write_images(folder, size, width, height, seed=10000 * (repeat + 1) + size)
                batcher = ImageBatcher(folder, (height, width), layout, min(size, 8), exact_batches=True)
                scales = quantize.calibrate(model, batcher, names, method=args.method)
                int8_path = os.path.join(work, f"int8_{size}_{repeat}.onnx")
                onnx.save(quantize.insert_qdq(model, scales), int8_path)
                found, iou, count = agreement(reference, detect(int8_path, held_out, height, width))
                print(f"{size:>6} | {repeat:>3} | {count:>16.2f} | {100 * found:>9.1f}% | {iou:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
