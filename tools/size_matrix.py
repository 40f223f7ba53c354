#!/usr/bin/env python3
"""Every AutoML EfficientDet variant at its native size: export, convert with create_onnx.py, run one image.

Each model is exported with AutoML's own code (as vendored in tflite-model-maker,
the ServingDriver that model_inspect.py --runmode saved_model uses) with its
initial random weights and no checkpoint (model_inspect's --ckpt_path=_), at
the image_size of its AutoML config, with model_inspect's post-processing
defaults (hard NMS, score 0.4). It is then converted by create_onnx.py in a
child process (wall time and peak memory measured, the self-check included)
and one image is run through the written graph on the CPU (ONNX Runtime, NMS
in the NumPy reference) in another child. Random weights make every score
about 0.01, so this checks shapes, time and memory, not detections.

Prints a Markdown table (pass/fail, sizes, conversion time, peak memory of the
conversion, ONNX node count, one-image CPU time); the README's size table is
its output. Slow (D7 alone takes minutes): not part of the tests. Models are
kept under --work and reused by a later run.
"""

import argparse
import logging
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

log = logging.getLogger("size_matrix")

MODELS = [f"efficientdet-d{i}" for i in range(8)] + ["efficientdet-d7x"] + \
    [f"efficientdet-lite{i}" for i in range(5)]


def _automl():
    from tensorflow_examples.lite.model_maker.third_party.efficientdet import hparams_config, inference

    return hparams_config, inference


def native_size(model_name):
    """(height, width) of the model's AutoML config."""
    from tensorflow_examples.lite.model_maker.third_party.efficientdet import utils

    hparams_config, _ = _automl()
    return utils.parse_image_size(hparams_config.get_efficientdet_config(model_name).image_size)


def export(model_name, output):
    """Export `model_name` (random initial weights) as a SavedModel at `output` (run in a child process)."""
    import tensorflow.compat.v1 as tf

    hparams_config, inference = _automl()
    tf.disable_eager_execution()
    tf.set_random_seed(0)
    config = hparams_config.get_detection_config(model_name)
    config.is_training_bn = False
    config.nms_configs.method = "hard"
    config.nms_configs.score_thresh = 0.4
    driver = inference.ServingDriver(model_name, "_", batch_size=1, model_params=config.as_dict())
    driver.build()
    partial = output + ".partial"
    driver.export(partial)
    os.replace(partial, output)


def run_measured(command):
    """Run a child process: (return code, stderr, seconds, peak resident bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, stderr, time.perf_counter() - start, usage.ru_maxrss * 1024


def last_error(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["(no output)"])[-1][:200]


def run_one_image(onnx_path, hw):
    """Print the seconds one image takes through the graph on the CPU (run in a child process)."""
    from efficientdet_trt.run.onnx_runner import OnnxCpuRunner

    with OnnxCpuRunner(onnx_path) as runner:
        spec = runner.input_spec()
        shape = (1, hw[0], hw[1], 3) if runner.input_layout == "NHWC" else (1, 3, hw[0], hw[1])
        image = np.random.default_rng(0).uniform(0, 255, shape).astype(spec.dtype)
        start = time.perf_counter()
        outputs = runner.infer({spec.name: image})
        seconds = time.perf_counter() - start
    log.info("%d detections; seconds %.4f", int(outputs["num_detections"][0, 0]), seconds)


def measure(model_name, work):
    """One table row (a dict) for `model_name`."""
    import onnx

    height, width = native_size(model_name)
    row = {"model": model_name, "size": f"{width}x{height}", "result": "FAIL"}
    saved_model = os.path.join(work, model_name)
    if not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
        log.info("%s: exporting at %dx%d", model_name, width, height)
        code, stderr, seconds, _ = run_measured([sys.executable, __file__, "--export", model_name,
                                                 "--output", saved_model])
        if code != 0:
            row["note"] = f"export failed: {last_error(stderr)}"
            return row
        log.info("%s: exported in %.0f s", model_name, seconds)
    onnx_path = os.path.join(work, model_name + ".onnx")
    log.info("%s: converting", model_name)
    code, stderr, seconds, peak = run_measured([sys.executable, os.path.join(ROOT, "create_onnx.py"),
                                                "--saved_model", saved_model, "--onnx", onnx_path])
    row.update(convert_s=seconds, peak_gb=peak / 2 ** 30)
    if code != 0:
        row["note"] = last_error(stderr)
        return row
    row["nodes"] = len(onnx.load(onnx_path, load_external_data=False).graph.node)
    # In a child too: a child forked from a process that ran a big model would report its peak memory.
    code, stderr, _, _ = run_measured([sys.executable, __file__, "--run_image", onnx_path,
                                       "--output", f"{height},{width}"])
    if code != 0:
        row["note"] = f"one image failed: {last_error(stderr)}"
        return row
    row["image_s"] = float(stderr.strip().splitlines()[-1].split()[-1])
    row["result"] = "pass"
    return row


def table(rows):
    lines = ["| model | input (W×H) | result | convert (s) | peak memory (GB) | ONNX nodes | one image on CPU (s) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        def cell(key, fmt):
            return fmt.format(row[key]) if key in row else "–"
        result = row["result"] + (f": {row['note']}" if row.get("note") else "")
        lines.append(f"| {row['model']} | {row['size']} | {result} | {cell('convert_s', '{:.0f}')} | "
                     f"{cell('peak_gb', '{:.2f}')} | {cell('nodes', '{}')} | {cell('image_s', '{:.2f}')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, metavar="NAME",
                        help="AutoML model names (efficientdet-d0 ... d7x, efficientdet-lite0 ... lite4)")
    parser.add_argument("--work", default=os.path.join(ROOT, ".cache", "size_matrix"),
                        help="folder for the exported SavedModels and converted graphs (reused)")
    parser.add_argument("--export", metavar="NAME", help=argparse.SUPPRESS)  # child process: export one model
    parser.add_argument("--run_image", metavar="ONNX", help=argparse.SUPPRESS)  # child process: one image
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.export:
        export(args.export, args.output)
        return 0
    if args.run_image:
        run_one_image(args.run_image, tuple(int(v) for v in args.output.split(",")))
        return 0
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for model_name in args.models:
        rows.append(measure(model_name, args.work))
        log.info("%s: %s", model_name, rows[-1])
    print(table(rows))
    return 0 if all(row["result"] == "pass" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
