#!/usr/bin/env python3
"""CPU inference: the converted ONNX in OnnxCpuRunner against the SavedModel in TensorFlow.

Both run a test fixture (tests/conftest.py MODELS; exported once and cached)
on the same model-size canvases of generated images, in one process, each
with the same thread count: TensorFlow as `infer.py`'s comparison runs it
(runners.TFSavedModelRunner, one image per call: AutoML's exports take batch
1), ours as infer.py runs it (ONNX Runtime plus the NumPy NMS plugin), at
batch 1 and batch 8. Prints ms per image, images/s and ours/TensorFlow side
by side. The graph is converted with the model's own NMS settings unless
--nms_threshold is given.
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

import numpy as np  # noqa: E402


def median_time(function, repeats):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", default="d0_hard", help="test fixture (default: d0_hard, D0 at 256x256)")
    parser.add_argument("--threads", type=int, default=2, help="threads on both sides (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure, median kept (default: 5)")
    parser.add_argument("--nms_threshold", type=float, help="score threshold of the converted graph (default: the "
                        "model's)")
    args = parser.parse_args()

    import onnx
    import tensorflow as tf
    from conftest import input_hw, saved_model_path
    from synthetic_images import make_image

    from efficientdet_trt.convert import pipeline
    from efficientdet_trt.run.onnx_runner import OnnxCpuRunner
    from efficientdet_trt.run.tf_runner import TFSavedModelRunner

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    path = saved_model_path(args.fixture)
    height, width = input_hw(args.fixture)
    images = [np.asarray(make_image(width, height, 900 + i)[0]) for i in range(8)]
    options = {} if args.nms_threshold is None else {"nms_threshold": args.nms_threshold}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        onnx.save(pipeline.build_graph(pipeline.convert_saved_model(path), pipeline.GraphOptions(**options)), onnx_path)
        ours = OnnxCpuRunner(onnx_path, threads=args.threads).activate()
        theirs = TFSavedModelRunner(path, (height, width)).activate()
        batch8 = np.stack(images).astype(np.float32)
        rows = [
            ("batch 1", median_time(lambda: theirs.run_image(images[0]), args.repeats),
             median_time(lambda: ours.infer({"input": batch8[:1]}), args.repeats), 1),
            ("batch 8", median_time(lambda: [theirs.run_image(image) for image in images], args.repeats),
             median_time(lambda: ours.infer({"input": batch8}), args.repeats), 8),
        ]
    print(f"{args.fixture} ({width}x{height}), {args.threads} threads, median of {args.repeats}")
    print(f"{'':<10}{'TensorFlow ms/img':>18}{'ours ms/img':>13}{'TF img/s':>10}{'ours img/s':>12}{'ours/TF':>9}")
    for label, tf_s, ours_s, count in rows:
        print(f"{label:<10}{1000 * tf_s / count:>18.1f}{1000 * ours_s / count:>13.1f}{count / tf_s:>10.1f}"
              f"{count / ours_s:>12.1f}{ours_s / tf_s:>9.2f}")


if __name__ == "__main__":
    main()
