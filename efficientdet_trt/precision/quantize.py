"""INT8 written into the ONNX graph as explicit Q/DQ, on the CPU (what TensorRT 11.x builds).

TensorRT 11.x has no INT8 calibrator: INT8 must arrive as QuantizeLinear /
DequantizeLinear pairs. `to_int8` makes them without TensorRT or a GPU:

- which: the input and the weights of every Conv, except, for "mixed", the
  stem and blocks_0..2 (the layers that lose the most accuracy in INT8);
- activations: one symmetric per-tensor scale each (zero point 0), TensorRT's
  entropy (or min-max) calibration (calibration.py) over the calibration images, computed
  by ONNX Runtime on the graph cut before the NMS; every Conv input is
  calibrated, so one cache serves int8 and mixed;
- weights: symmetric per output channel, stored as INT8 in [-127, 127] behind
  a DequantizeLinear (TensorRT's "pre-quantized weights");
- everything else FP16 (the graph is converted by fp16.to_fp16 first, the
  NMS kept FP32; Q/DQ scales are then float16, opset 19), as TensorRT 8.6/10.x
  runs INT8 with the FP16 flag; mixed therefore keeps its layers in FP16;
- the scales go to `--calib_cache` in TensorRT's own text format, so a later
  build reuses them without reading images, and a TensorRT 8.6/10 cache of the
  same ONNX (the same tensor names) serves too.
"""

import logging
import os
import time

import numpy as np
from tqdm import tqdm

from efficientdet_trt.convert.graph_surgery import cleanup, gs, infer_shapes
from efficientdet_trt.core.common import UserError
from efficientdet_trt.precision import calibration

log = logging.getLogger("quantize")

# Kept out of INT8 in "mixed" precision (TensorRT 8.6/10.x keeps them at FP16).
# The stem and the first three MBConv blocks: AutoML's blocks_0..2; in TFOD's EfficientNet
# (tf-models-official) the same blocks are stack_0 (one block) and stack_1 (two).
MIXED_KEPT_SCOPES = ("/stem/", "blocks_0/", "blocks_1/", "blocks_2/", "/stem_conv2d/", "/stack_0/", "/stack_1/")


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


def calibrate(model, batcher, names, timings=None, method="entropy"):
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
    scales = {name: float(np.float32(scale)) for name, scale in collector.scales(method).items()}
    spent["thresholds"] = time.perf_counter() - clock
    log.info("calibrated %d activation tensors on %d images in %.1f s (%s)", len(names), seen, sum(spent.values()),
             method)
    if timings is not None:
        timings.update(spent, count=seen)
    return scales


def scales_from_cache(path, names, method="entropy"):
    """The scales of `names` read from a calibration cache; a clear error when some are missing."""
    cached = calibration.read_cache(path, method)
    missing = [name for name in names if name not in cached]
    if missing:
        raise UserError(f"{path}: no scale for {len(missing)} of this graph's {len(names)} Conv inputs "
                        f"(e.g. {missing[0]!r}); the cache was made for another graph, delete it to recalibrate")
    return {name: cached[name] for name in names}


def as_scale(values, dtype):
    """Scales in `dtype`, at least its smallest normal number (a float16 scale must not round to zero)."""
    return np.array(np.maximum(np.asarray(values, np.float32), np.finfo(dtype).tiny), dtype=dtype)


def weight_scales(weights, dtype=np.float32):
    """Symmetric per-output-channel scales (axis 0) mapping max |w| to 127, in `dtype`; 1 for all-zero channels."""
    peaks = np.abs(weights.reshape(len(weights), -1)).max(axis=1).astype(np.float32)
    return as_scale(np.where(peaks > 0, peaks / np.float32(127), np.float32(1)), dtype)


def quantize_weights(weights, scales):
    """INT8 weights for per-channel `scales` (rounding half to even, as QuantizeLinear does)."""
    shape = (-1,) + (1,) * (weights.ndim - 1)
    divided = np.asarray(weights, np.float32) / scales.astype(np.float32).reshape(shape)
    return np.clip(np.round(divided), -127, 127).astype(np.int8)


def _float_type(tensor):
    if tensor.dtype not in (np.float16, np.float32):
        raise RuntimeError(f"{tensor.name}: expected a float16 or float32 tensor, found {tensor.dtype}")
    return tensor.dtype


def _quantize_activation(graph, source, scale_value, zero):
    """Q/DQ after `source` with a per-tensor scale of `source`'s own float type; returns the DQ output."""
    dtype = _float_type(source)
    scale = gs.Constant(f"{source.name}_scale", as_scale(scale_value, dtype))
    quantized = gs.Variable(f"{source.name}_int8", np.int8, source.shape)
    restored = gs.Variable(f"{source.name}_dq", dtype, source.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", f"{source.name}_quantize", inputs=[source, scale, zero],
                               outputs=[quantized]))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{source.name}_dequantize", inputs=[quantized, scale, zero],
                               outputs=[restored]))
    return restored


def _quantize_weights(graph, weights):
    """INT8 copy of constant `weights` behind a per-channel DequantizeLinear; returns the DQ output."""
    dtype = _float_type(weights)
    scales = weight_scales(np.asarray(weights.values, np.float32), dtype)
    stored = gs.Constant(f"{weights.name}_int8", quantize_weights(weights.values, scales))
    restored = gs.Variable(f"{weights.name}_dq", dtype, weights.values.shape)
    inputs = [stored, gs.Constant(f"{weights.name}_scales", scales),
              gs.Constant(f"{weights.name}_zero_points", np.zeros(len(scales), np.int8))]
    graph.nodes.append(gs.Node("DequantizeLinear", f"{weights.name}_dequantize", attrs={"axis": 0},
                               inputs=inputs, outputs=[restored]))
    return restored


def insert_qdq(model, activation_scales, mixed=False):
    """A copy of `model` with Q/DQ before each chosen Conv's input and DQ'd INT8 weights.

    Works on a float32 or a float16 graph: each Q/DQ's scale has the type of the
    tensor it quantizes (float16 scales need opset 19, which is then set).
    """
    graph = infer_shapes(gs.import_onnx(model))  # every tensor's type known: scales follow it
    zero = gs.Constant("qdq_zero_point", np.zeros((), np.int8))
    dequantized = {}  # activation name -> DQ output, shared by every Conv reading it
    weights_done = {}  # weight name -> DQ output, for weights shared between Convs
    convs = conv_nodes(graph, mixed)
    for node in convs:
        source, weights = node.inputs[0], node.inputs[1]
        if source.name not in activation_scales:
            raise UserError(f"no calibration scale for {source.name!r}, the input of {node.name}")
        if source.name not in dequantized:
            dequantized[source.name] = _quantize_activation(graph, source, activation_scales[source.name], zero)
        if weights.name not in weights_done:
            weights_done[weights.name] = _quantize_weights(graph, weights)
        node.inputs[0] = dequantized[source.name]
        node.inputs[1] = weights_done[weights.name]
    cleanup(graph)
    half = any(_float_type(tensor) == np.float16 for tensor in dequantized.values())
    log.info("inserted Q/DQ: %d Conv layers in INT8 (%d activation tensors), the rest in %s%s", len(convs),
             len(dequantized), "FP16" if half else "FP32", "; stem and blocks_0..2 not in INT8" if mixed else "")
    result = gs.export_onnx(graph)
    if half:
        # QuantizeLinear/DequantizeLinear take float16 scales from opset 19. Every op
        # create_onnx writes means the same at opset 19 as at 13 (later versions only
        # add types or attributes whose defaults keep the old behaviour).
        for opset in result.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, 19)
    return result


def to_int8(model, mixed=False, batcher=None, cache_path=None, fp16=True, method="entropy"):
    """The Q/DQ graph of the float32 `model`, the rest in FP16 unless fp16=False.

    Scales come from `cache_path` if it exists, else from calibrating the FP32
    graph on `batcher` (then written to `cache_path`).
    """
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        raise UserError("the ONNX already has QuantizeLinear/DequantizeLinear nodes; give build_engine.py the FP32 "
                        "graph from create_onnx.py")
    names = activation_names(model)
    if not names:
        raise UserError("the ONNX has no Conv layer with constant weights to quantize; give build_engine.py the "
                        "FP32 graph from create_onnx.py")
    if cache_path and os.path.isfile(cache_path):
        scales = scales_from_cache(cache_path, names, method)
        log.info("activation scales read from %s (no calibration images read)", cache_path)
    else:
        if batcher is None:
            raise UserError("INT8 needs calibration images (--calib_input) or an existing calibration cache "
                            "(--calib_cache)")
        scales = calibrate(model, batcher, names, method=method)
        if cache_path:
            calibration.write_cache(cache_path, scales, method=method)
            log.info("wrote calibration cache %s", cache_path)
    if fp16:
        from efficientdet_trt.precision.fp16 import to_fp16

        model = to_fp16(model)
    return insert_qdq(model, scales, mixed)
