#!/usr/bin/env python3
"""Every kind of graph create_onnx.py and build_engine.py --save_onnx write, built by an NVIDIA builder.

No machine here runs TensorRT, but TensorRT-RTX (`tensorrt-rtx-cu13-libs` and
`-bindings` on PyPI, module `tensorrt_rtx`) builds on a data-centre GPU: it has
the same ONNX parser and a strongly typed builder like TensorRT 11.x's, though
it has no EfficientNMS_TRT plugin and refuses to run engines on compute
capability 9.0. Two steps:

  make DIR   (here, CPU): write each kind of graph from the test fixtures,
             cut before its NMS node (and a full --onnx_nms graph, whose
             NonMaxSuppression is a builtin layer), with every initializer of
             more than 4096 values zeroed (parsing and building do not depend
             on weight values; zeros make the archive small), into DIR.
  build DIR  (on the GPU machine, tensorrt_rtx importable): parse and build
             each graph (dynamic batches with a 1/4/8 profile) and print a
             Markdown table: graph, ok or the builder's error, layers, build
             seconds; also written as DIR/results.json.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

BIG = 4096  # initializers with more values than this are zeroed in the archive

# name -> (fixture, build_graph options, build_engine.py --save_onnx precision or None)
KINDS = {
    "d0-fp32-nhwc-dynamic": ("d0_hard", {}, None),
    "d0-fp16": ("d0_hard", {}, "fp16"),
    "d0-int8-qdq": ("d0_hard", {}, "int8"),
    "d0-mixed-qdq": ("d0_hard", {}, "mixed"),
    "d0-uint8-input": ("d0_hard", {"input_dtype": "uint8"}, None),
    "d0-nchw-batch1": ("d0_hard", {"input_shape": "1,3,256,256"}, None),
    "d0-640x320-nonsquare": ("d0_640x320", {}, None),
    "lite0-320": ("lite0_320", {}, None),
    "lite0-320-fp16": ("lite0_320", {}, "fp16"),
    "tfod-d0-512": ("tfod_d0", {}, None),
    "tfod-d0-512-int8-qdq": ("tfod_d0", {}, "int8"),
    "d0-onnx-nms-full": ("d0_hard", {"onnx_nms": True}, None),
}


def cut_before_nms(model):
    """The graph up to the NMS plugin's inputs (the plugin and the image window after it removed)."""
    from efficientdet_trt.convert.graph_surgery import cleanup, gs

    graph = gs.import_onnx(model)
    nms = [node for node in graph.nodes if node.op in ("EfficientNMS_TRT", "BatchedNMS_TRT")]
    if not nms:
        return model
    graph.outputs = [tensor for tensor in nms[0].inputs if not isinstance(tensor, gs.Constant)]
    return gs.export_onnx(cleanup(graph))


def zero_big_initializers(model):
    import numpy as np
    from onnx import numpy_helper

    for index, tensor in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.size > BIG:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.zeros_like(values), tensor.name))
    return model


def make(folder):
    import onnx
    from conftest import saved_model_path, tfod_saved_model_path
    from synthetic_images import write_images

    from efficientdet_trt.convert import pipeline

    os.makedirs(folder, exist_ok=True)
    converted = {}
    calibration = os.path.join(folder, "calibration_images")
    for name, (fixture, options, precision) in KINDS.items():
        if fixture not in converted:
            path = tfod_saved_model_path(fixture) if fixture.startswith("tfod") else saved_model_path(fixture)
            converted[fixture] = pipeline.convert_saved_model(path)
        model = pipeline.build_graph(converted[fixture], pipeline.GraphOptions(**options))
        full = os.path.join(folder, f".{name}.full.onnx")
        onnx.save(model, full)
        if precision:
            args = [sys.executable, os.path.join(ROOT, "build_engine.py"), "--onnx", full, "--precision", precision,
                    "--save_onnx", full + ".converted.onnx"]
            if precision in ("int8", "mixed"):
                size = 512 if fixture.startswith("tfod") else 256
                write_images(calibration, 16, size, size)
                args += ["--calib_input", calibration, "--calib_batch_size", "8"]
            subprocess.run(args, check=True)
            model = onnx.load(full + ".converted.onnx")
            os.remove(full + ".converted.onnx")
        os.remove(full)
        onnx.save(zero_big_initializers(cut_before_nms(model)), os.path.join(folder, f"{name}.onnx"))
        print(f"wrote {name}.onnx", flush=True)


def build(folder):
    try:
        import tensorrt_rtx as trt
    except ImportError:  # the PyPI bindings wheel installs the module under this name
        import tensorrt_rtx_bindings as trt

    class Logger(trt.ILogger):
        """Keeps the builder's errors, so a failed build's row says why."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, message):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(message))

    logger = Logger()
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.onnx"))):
        name = os.path.basename(path)[:-5]
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        row = {"graph": name, "ok": False, "layers": None, "seconds": None, "error": ""}
        with open(path, "rb") as handle:
            parsed = parser.parse(handle.read())
        if not parsed:
            row["error"] = "parse: " + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))[:300]
            rows.append(row)
            continue
        row["layers"] = network.num_layers
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        dynamic = False
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            shape = list(tensor.shape)
            if shape[0] < 0:
                dynamic = True
                low, opt, high = ([batch, *shape[1:]] for batch in (1, 4, 8))
                profile.set_shape(tensor.name, low, opt, high)
        if dynamic:
            config.add_optimization_profile(profile)
        start = time.perf_counter()
        try:
            data = builder.build_serialized_network(network, config)
        except Exception as error:  # the bindings raise for some failures instead of returning None
            data, row["error"] = None, f"build: {error}"[:300]
        row["seconds"] = round(time.perf_counter() - start, 1)
        row["ok"] = data is not None
        if data is None and not row["error"]:
            row["error"] = "build: " + (logger.errors[-1] if logger.errors else "no engine")[:300]
        logger.errors.clear()
        rows.append(row)
        print(f"{name}: {'built' if row['ok'] else row['error']}", flush=True)
    print(f"\nTensorRT-RTX {trt.__version__}")
    print("| graph | parsed and built | layers | build s | error |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['graph']} | {'yes' if row['ok'] else 'no'} | {row['layers'] or ''} | "
              f"{row['seconds'] if row['seconds'] is not None else ''} | {row['error']} |")
    with open(os.path.join(os.environ.get("OUT", folder), "results.json"), "w") as handle:
        json.dump({"tensorrt_rtx": trt.__version__, "rows": rows}, handle, indent=1)
    return 0 if all(row["ok"] for row in rows if "onnx-nms" not in row["graph"]) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["make", "build"])
    parser.add_argument("folder")
    args = parser.parse_args()
    if args.step == "make":
        make(args.folder)
        return 0
    return build(args.folder)


if __name__ == "__main__":
    sys.exit(main())
