#!/usr/bin/env python3
"""Time INT8 calibration on the CPU (the TensorRT 11.x Q/DQ path) per calibration image.

Writes synthetic JPEG calibration images, then runs quantize.calibrate on the
d0 test fixture's ONNX (or --onnx) and prints the time per image, split into
image reading, network (ONNX Runtime), histograms and the entropy threshold
search (done once per calibration, whatever the image count), plus the time
to insert the Q/DQ nodes.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--fixture", default="d0_hard", help="test fixture name (see tests/conftest.py MODELS)")
    parser.add_argument("--onnx", help="calibrate this ONNX from create_onnx.py instead of a fixture")
    parser.add_argument("--images", type=int, default=64, help="number of calibration images")
    parser.add_argument("--batch_size", type=int, default=8, help="calibration batch size")
    parser.add_argument("--image_size", default="640x480", help="calibration image size WxH")
    args = parser.parse_args()

    import onnx
    from synthetic_images import write_images

    from efficientdet_trt.precision import quantize
    from efficientdet_trt.run.onnx_runner import onnx_input_shape
    from efficientdet_trt.run.runner import image_layout
    from image_batcher import ImageBatcher

    if args.onnx:
        model = onnx.load(args.onnx)
    else:
        from conftest import saved_model_path

        from efficientdet_trt.convert import pipeline

        model = pipeline.build_graph(pipeline.convert_saved_model(saved_model_path(args.fixture)))
    layout, (height, width) = image_layout(onnx_input_shape(model), args.onnx or args.fixture)
    image_w, image_h = (int(v) for v in args.image_size.split("x"))
    names = quantize.activation_names(model)
    with tempfile.TemporaryDirectory() as folder:
        write_images(folder, args.images, image_w, image_h, seed=1000, ext="jpg")
        batcher = ImageBatcher(folder, (height, width), layout, args.batch_size, exact_batches=True, shuffle=True)
        timings = {}
        scales = quantize.calibrate(model, batcher, names, timings)
    start = time.perf_counter()
    quantize.insert_qdq(model, scales)
    insert = time.perf_counter() - start
    count = timings.pop("count")
    thresholds = timings.pop("thresholds")
    per_image = sum(timings.values()) / count
    print(f"model input {height}x{width} {layout}, {len(names)} activation tensors, {count} images "
          f"({image_w}x{image_h} JPEG), batch {args.batch_size}, {os.cpu_count()} CPU cores")
    print(f"calibration time per image: {1000 * per_image:.1f} ms")
    for stage, seconds in timings.items():
        print(f"  {stage:11s} {1000 * seconds / count:8.1f} ms")
    print(f"once per calibration: entropy threshold search {thresholds:.1f} s "
          f"({1000 * thresholds / len(names):.0f} ms per tensor), Q/DQ insertion {insert:.1f} s")
    print(f"total for {count} images: {per_image * count + thresholds + insert:.1f} s; "
          f"for 5000 images (the default): ~{(per_image * 5000 + thresholds + insert) / 60:.1f} min")


if __name__ == "__main__":
    main()
