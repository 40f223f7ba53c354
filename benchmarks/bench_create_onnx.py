#!/usr/bin/env python3
"""create_onnx.py's pruned path (the default) against --full_graph, side by side, on the same SavedModels.

For each SavedModel both paths run as separate create_onnx.py processes, one
after the other, --repeat times in alternating order; the table gives the
median wall time (process start to file written, the self-check included) and
the largest peak resident memory of the process. The two ONNX files written
are then compared: node counts, and the detections of both on the same
synthetic images in ONNX Runtime (EfficientNMS_TRT in the NumPy reference).

The default models are AutoML exports with random weights (model_inspect.py's
post-processing defaults) of D0 at 512x512 and D1 at 640x640, made once by
tests/fixtures/make_automl_savedmodel.py and cached with the test fixtures.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

PATHS = (("pruned", []), ("full graph", ["--full_graph"]))


def run_create_onnx(saved_model, output, extra):
    """(wall seconds, peak RSS in MB) of one create_onnx.py process."""
    command = [sys.executable, os.path.join(ROOT, "create_onnx.py"), "--saved_model", saved_model, "--onnx", output,
               *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def detections(onnx_path, images):
    from efficientdet_trt.run.onnx_runner import OnnxCpuRunner

    runner = OnnxCpuRunner(onnx_path).activate()
    return [runner.infer({"input": image[None]}) for image in images]


def same_detections(first, second):
    """True when both runs returned the same detections (classes equal, boxes and scores within 1e-5)."""
    for a, b in zip(first, second):
        for key in a:
            if a[key].dtype.kind == "f":
                if not np.allclose(a[key], b[key], rtol=0, atol=1e-5):
                    return False
            elif not np.array_equal(a[key], b[key]):
                return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="efficientdet-d0:512,efficientdet-d1:640",
                        help="AutoML model:image_size pairs to export (random weights) and convert")
    parser.add_argument("--saved_model", nargs="*", default=[], help="also time these SavedModels")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path per model")
    parser.add_argument("--images", type=int, default=2, help="synthetic images compared per model")
    args = parser.parse_args()

    import onnx
    from conftest import automl_saved_model
    from synthetic_images import make_image

    models = []
    for item in filter(None, args.models.split(",")):
        name, size = item.split(":")
        print(f"exporting {name} at {size} (once, cached) ...", flush=True)
        models.append((f"{name} {size}", automl_saved_model(f"bench-{name}-{size}", model_name=name,
                                                            image_size=int(size), nms_method="hard",
                                                            score_thresh=0.4)))
    models += [(os.path.basename(os.path.normpath(path)), path) for path in args.saved_model]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, saved_model in models:
            walls = {name: [] for name, _ in PATHS}
            peaks = {name: [] for name, _ in PATHS}
            outputs = {name: os.path.join(tmp, f"{len(rows)}-{index}.onnx") for index, (name, _) in enumerate(PATHS)}
            for run in range(args.repeat):
                for name, extra in PATHS if run % 2 == 0 else PATHS[::-1]:
                    wall, peak = run_create_onnx(saved_model, outputs[name], extra)
                    walls[name].append(wall)
                    peaks[name].append(peak)
                    print(f"  {label}, {name}: {wall:.1f} s, {peak:.0f} MB", flush=True)
            nodes = {name: len(onnx.load(path).graph.node) for name, path in outputs.items()}
            model = onnx.load(outputs["pruned"], load_external_data=False)
            shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
            height, width = shape[1:3] if shape[-1] == 3 else shape[2:4]
            images = [np.asarray(make_image(width, height, seed)[0], np.float32) for seed in range(args.images)]
            found = {name: detections(path, images) for name, path in outputs.items()}
            rows.append((label, {name: statistics.median(values) for name, values in walls.items()},
                         {name: max(values) for name, values in peaks.items()}, nodes,
                         same_detections(found["pruned"], found["full graph"])))

    print(f"\ncreate_onnx.py, median of {args.repeat} runs per path; peak = largest maximum resident set size")
    print(f"{'model':30s} {'path':11s} {'wall s':>7s} {'peak MB':>8s} {'nodes':>6s}")
    for label, wall, peak, nodes, same in rows:
        for name, _ in PATHS:
            print(f"{label:30s} {name:11s} {wall[name]:7.1f} {peak[name]:8.0f} {nodes[name]:6d}")
        print(f"{'':30s} {'ratio':11s} {wall['pruned'] / wall['full graph']:6.2f}x "
              f"{peak['pruned'] / peak['full graph']:7.2f}x   detections {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
