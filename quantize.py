"""INT8 written into the ONNX graph as explicit Q/DQ, on the CPU (what TensorRT 11.x builds).

TensorRT 11.x has no INT8 calibrator: INT8 must arrive as QuantizeLinear /
DequantizeLinear pairs. `to_int8` makes them without TensorRT or a GPU:

- which: the input and the weights of every Conv, except, for "mixed", the
  stem and blocks_0..2 (the layers that lose the most accuracy in INT8);
- activations: one symmetric per-tensor scale each (zero point 0), TensorRT's
  entropy calibration (calibration.py) over the calibration images, computed
  by ONNX Runtime on the graph cut before the NMS; every Conv input is
  calibrated, so one cache serves int8 and mixed;
- weights: symmetric per output channel, stored as INT8 in [-127, 127] behind
  a DequantizeLinear (TensorRT's "pre-quantized weights");
- the scales go to `--calib_cache` in TensorRT's own text format, so a later
  build (or a TensorRT 8.6/10 calibrator) reuses them without reading images,
  and a TensorRT 10 cache of the same ONNX serves here too.
"""

import logging
import os
import time

import numpy as np
import onnx_graphsurgeon as gs
from tqdm import tqdm

import calibration
from common import UserError
from graph_surgery import cleanup

log = logging.getLogger("quantize")

# Kept out of INT8 in "mixed" precision (TensorRT 8.6/10.x keeps them at FP16).
MIXED_KEPT_SCOPES = ("/stem/", "blocks_0/", "blocks_1/", "blocks_2/")


def conv_nodes(graph, mixed=False):
    """The Conv nodes to quantize: all of them, or for mixed all outside MIXED_KEPT_SCOPES."""
    convs = [node for node in graph.nodes if node.op == "Conv" and isinstance(node.inputs[1], gs.Constant)]
    if mixed:
        convs = [node for node in convs if not any(scope in node.name for scope in MIXED_KEPT_SCOPES)]
    return convs


def activation_names(model):
    """Names of the tensors that get activation scales: every Conv's data input, in graph order."""
    graph = gs.import_onnx(model)
    names = []
    for node in conv_nodes(graph):
        name = node.inputs[0].name
        if name not in names:
            names.append(name)
    return names


def calibrate(model, batcher, names, timings=None):
    """name -> INT8 scale of each tensor in `names`, from the batches of `batcher`, in ONNX Runtime.

    `timings`, if given, receives the seconds spent reading images, running the
    network, histogramming and searching thresholds, and the image count.
    """
    import onnxruntime as ort

    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    outputs = []
    for name in names:
        tensor = tensors[name]
        tensor.dtype = tensor.dtype or np.float32
        outputs.append(tensor)
    graph.outputs = outputs  # everything after the last Conv input (heads, NMS) is cut away
    cleanup(graph)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(gs.export_onnx(graph).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    collector = calibration.HistogramCollector()
    spent = dict.fromkeys(("images", "network", "histograms", "thresholds"), 0.0)
    seen = 0
    clock = time.perf_counter()
    with tqdm(total=len(batcher.files), unit="img", desc="calibrate", disable=None) as progress:
        for batch, infos in batcher:
            spent["images"] += time.perf_counter() - clock
            clock = time.perf_counter()
            values = session.run(names, {input_name: batch})
            spent["network"] += time.perf_counter() - clock
            clock = time.perf_counter()
            collector.observe(dict(zip(names, values)))
            spent["histograms"] += time.perf_counter() - clock
            seen += len(infos)
            progress.update(len(infos))
            clock = time.perf_counter()
    if not seen:
        raise UserError("no calibration image could be read")
    clock = time.perf_counter()
    scales = {name: float(np.float32(scale)) for name, scale in collector.scales().items()}
    spent["thresholds"] = time.perf_counter() - clock
    log.info("calibrated %d activation tensors on %d images in %.1f s", len(names), seen, sum(spent.values()))
    if timings is not None:
        timings.update(spent, count=seen)
    return scales


def scales_from_cache(path, names):
    """The scales of `names` read from a calibration cache; a clear error when some are missing."""
    cached = calibration.read_cache(path)
    missing = [name for name in names if name not in cached]
    if missing:
        raise UserError(f"{path}: no scale for {len(missing)} of this graph's {len(names)} Conv inputs "
                        f"(e.g. {missing[0]!r}); the cache was made for another graph, delete it to recalibrate")
    return {name: cached[name] for name in names}


def weight_scales(weights):
    """Symmetric per-output-channel scales (axis 0) mapping max |w| to 127; 1.0 for all-zero channels."""
    peaks = np.abs(weights.reshape(len(weights), -1)).max(axis=1).astype(np.float32)
    return np.where(peaks > 0, peaks / np.float32(127), np.float32(1)).astype(np.float32)


def quantize_weights(weights, scales):
    shape = (-1,) + (1,) * (weights.ndim - 1)
    return np.clip(np.round(weights / scales.reshape(shape)), -127, 127).astype(np.int8)


def insert_qdq(model, activation_scales, mixed=False):
    """A copy of `model` with Q/DQ before each chosen Conv's input and DQ'd INT8 weights."""
    graph = gs.import_onnx(model)
    zero = gs.Constant("qdq_zero_point", np.zeros((), np.int8))
    dequantized = {}  # activation name -> DQ output, shared by every Conv reading it
    weights_done = {}  # weight name -> DQ output, for weights shared between Convs
    convs = conv_nodes(graph, mixed)
    for index, node in enumerate(convs):
        source = node.inputs[0]
        if source.name not in dequantized:
            scale = gs.Constant(f"{source.name}_scale", np.array(activation_scales[source.name], np.float32))
            quantized = gs.Variable(f"{source.name}_int8", np.int8, source.shape)
            restored = gs.Variable(f"{source.name}_dq", np.float32, source.shape)
            graph.nodes.append(gs.Node("QuantizeLinear", f"{source.name}_quantize", inputs=[source, scale, zero],
                                       outputs=[quantized]))
            graph.nodes.append(gs.Node("DequantizeLinear", f"{source.name}_dequantize",
                                       inputs=[quantized, scale, zero], outputs=[restored]))
            dequantized[source.name] = restored
        node.inputs[0] = dequantized[source.name]
        weights = node.inputs[1]
        if weights.name not in weights_done:
            values = np.asarray(weights.values, np.float32)
            scales = weight_scales(values)
            stored = gs.Constant(f"{weights.name}_int8", quantize_weights(values, scales))
            restored = gs.Variable(f"{weights.name}_dq", np.float32, values.shape)
            graph.nodes.append(gs.Node("DequantizeLinear", f"{weights.name}_dequantize", attrs={"axis": 0},
                                       inputs=[stored, gs.Constant(f"{weights.name}_scales", scales),
                                               gs.Constant(f"{weights.name}_zero_points",
                                                           np.zeros(len(scales), np.int8))],
                                       outputs=[restored]))
            weights_done[weights.name] = restored
        node.inputs[1] = weights_done[weights.name]
    cleanup(graph)
    log.info("inserted Q/DQ: %d Conv layers in INT8 (%d activation tensors)%s", len(convs), len(dequantized),
             ", stem and blocks_0..2 kept in float" if mixed else "")
    return gs.export_onnx(graph)


def to_int8(model, mixed=False, batcher=None, cache_path=None):
    """The Q/DQ graph of `model`: scales from `cache_path` if it exists, else calibrated on `batcher` (and cached)."""

    names = activation_names(model)
    if cache_path and os.path.isfile(cache_path):
        scales = scales_from_cache(cache_path, names)
        log.info("activation scales read from %s (no calibration images read)", cache_path)
    else:
        if batcher is None:
            raise UserError("INT8 needs calibration images (--calib_input) or an existing calibration cache "
                            "(--calib_cache)")
        scales = calibrate(model, batcher, names)
        if cache_path:
            calibration.write_cache(cache_path, scales)
            log.info("wrote calibration cache %s", cache_path)
    return insert_qdq(model, scales, mixed)
