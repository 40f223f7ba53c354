"""ONNX graph edits that turn tf2onnx's EfficientDet graph into a TensorRT-ready one.

Each helper does one thing to an onnx-graphsurgeon Graph and logs it; the order
they are applied in is in `pipeline.build_graph`. What differs between the
model families is found by automl_graph.py and tfod_graph.py, which each
return the `ModelParts` below; everything here is shared.
"""

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from efficientdet_trt.core.common import UserError

log = logging.getLogger("graph_surgery")
G_LOGGER.colors = False  # else every run that logs a graph edit first prints "[W] colored module is not installed"

OUTPUT_NAMES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
PLUGIN_OPS = ("EfficientNMS_TRT", "BatchedNMS_TRT")  # the NMS plugin nodes add_efficient_nms / add_batched_nms make

# Normalisation on 0-255 RGB, per channel: (x - mean) * inv_std, the same two ops
# AutoML's graph uses, so the converted graph computes bit-identical inputs.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


@dataclass
class Normalization:
    mean: np.ndarray
    inv_std: np.ndarray
    source: str

    @classmethod
    def from_mean_std(cls, mean, std, source):
        mean = np.broadcast_to(np.asarray(mean, np.float64), (3,))
        std = np.broadcast_to(np.asarray(std, np.float64), (3,))
        return cls(mean.astype(np.float32), (1.0 / std).astype(np.float32), source)


def preset_normalization(name):
    if name == "imagenet":
        return Normalization.from_mean_std(IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    if name == "scale_range":
        return Normalization.from_mean_std(127.5, 127.5, "scale_range")
    raise ValueError(name)


@dataclass
class ModelParts:
    """What the shared surgery needs from a converted graph (automl_graph.recognise, tfod_graph.recognise)."""

    stem: gs.Node  # the first convolution: the new input is normalised into it
    native_size: Optional[Tuple[int, int]]  # (H, W) the model was exported for, None if unknown
    normalization: Optional[Normalization]  # the model's own, None if it could not be read
    class_head: gs.Variable  # raw class logits [N, A, C]
    box_head: gs.Variable  # raw box encodings [N, A, 4] as (ty, tx, th, tw), before any box_scales
    num_classes: int
    anchors: Callable[[int, int], np.ndarray]  # (height, width) -> [1, A, 4] (yc, xc, h, w) in input pixels
    box_scales: Optional[np.ndarray] = None  # the box coder's (ty, tx, th, tw) divisors; None: no scaling
    decoded_boxes: Optional[gs.Variable] = None  # the model's own decoded (ymin, xmin, ymax, xmax) pixel boxes
    drops_boxes_outside: bool = False  # the model's post-processing discards boxes outside the image (TFOD)


# ----------------------------------------------------------------------------- finding things


def _producer(tensor):
    return tensor.inputs[0] if tensor.inputs else None


def constant_value(tensor):
    """The values of a constant tensor, None for a computed one."""
    return tensor.values if isinstance(tensor, gs.Constant) else None


def ancestors(node, limit=64):
    """Nodes feeding `node`, breadth-first (nearest first), at most `limit` of them."""
    seen, queue, out = set(), [node], []
    while queue and len(out) < limit:
        current = queue.pop(0)
        for tensor in current.inputs:
            parent = _producer(tensor)
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
                out.append(parent)
                queue.append(parent)
    return out


def _comes_from_scope(tensor, scope, depth=6):
    node = _producer(tensor)
    for _ in range(depth):
        if node is None:
            return False
        if scope in node.name:
            return True
        node = _producer(node.inputs[0]) if node.inputs else None
    return False


def find_head_concat(graph, scope):
    """The Concat that joins a head's per-level outputs (Reshape -> Concat on axis 1)."""
    for node in graph.nodes:
        if node.op != "Concat" or len(node.inputs) < 3:
            continue
        if all(_producer(t) is not None and _producer(t).op == "Reshape" for t in node.inputs) and all(
                _comes_from_scope(t, scope) for t in node.inputs):
            return node
    raise UserError(f"cannot find the '{scope}' head's output Concat in the converted graph")


# ----------------------------------------------------------------------------- edits


INPUT_DTYPES = {"float32": np.float32, "uint8": np.uint8}


def replace_input(graph, stem, shape, layout, normalization, dtype="float32"):
    """New 0-255 RGB input `input` (float32, or uint8 cast to float32 in the graph), normalised and (NHWC)
    transposed into the stem conv.

    The TF preprocessing (cast, resize, pad) is left dangling for cleanup.
    """
    image = gs.Variable("input", dtype=INPUT_DTYPES[dtype], shape=list(shape))
    pixels = image
    if dtype == "uint8":
        pixels = gs.Variable("preprocessor/float", dtype=np.float32)
        graph.nodes.append(gs.Node("Cast", "preprocessor/cast", attrs={"to": onnx.TensorProto.FLOAT},
                                   inputs=[image], outputs=[pixels]))
    bshape = (1, 1, 1, 3) if layout == "NHWC" else (1, 3, 1, 1)
    centred = gs.Variable("preprocessor/centred", dtype=np.float32)
    normalised = gs.Variable("preprocessor/normalized", dtype=np.float32)
    graph.nodes.append(gs.Node("Sub", "preprocessor/mean", inputs=[
        pixels, gs.Constant("preprocessor/mean:0", normalization.mean.reshape(bshape))], outputs=[centred]))
    graph.nodes.append(gs.Node("Mul", "preprocessor/inv_std", inputs=[
        centred, gs.Constant("preprocessor/inv_std:0", normalization.inv_std.reshape(bshape))],
        outputs=[normalised]))
    if layout == "NHWC":
        nchw = gs.Variable("preprocessor/nchw", dtype=np.float32)
        graph.nodes.append(gs.Node("Transpose", "preprocessor/transpose", attrs={"perm": [0, 3, 1, 2]},
                                   inputs=[normalised], outputs=[nchw]))
        normalised = nchw
    stem.inputs[0] = normalised
    graph.inputs = [image]
    log.info("input 'input' %s %s %s, normalisation %s", list(shape), dtype, layout, normalization.source)
    return image


def _node_builder(graph, prefix, default_dtype=np.float32):
    """op(kind, inputs, dtype, **attrs) -> its output tensor, and const(name, values), naming under `prefix`."""
    counter = [0]

    def op(kind, inputs, dtype=default_dtype, **attrs):
        counter[0] += 1
        out = gs.Variable(f"{prefix}/{kind.lower()}_{counter[0]}", dtype=dtype)
        graph.nodes.append(gs.Node(kind, f"{prefix}/{kind}_{counter[0]}", attrs=attrs, inputs=inputs, outputs=[out]))
        return out

    named = set()

    def const(name, values):
        if name in named:  # two constants of one name: the exported graph would keep only one of them
            raise ValueError(f"constant {prefix}/{name} made twice")
        named.add(name)
        return gs.Constant(f"{prefix}/{name}", np.asarray(values))

    return op, const


def scale_box_encodings(graph, boxes, scales):
    """Divide (ty, tx, th, tw) by the box coder's scale factors (TFOD's faster_rcnn coder), so the
    encodings are in the plain coding EfficientNMS_TRT decodes. No node when every factor is 1."""
    if scales is None or np.all(np.asarray(scales) == 1):
        return boxes
    scaled = gs.Variable("boxes/unscaled", dtype=np.float32)
    factors = (1.0 / np.asarray(scales, np.float64)).astype(np.float32).reshape(1, 1, 4)
    graph.nodes.append(gs.Node("Mul", "boxes/unscale", inputs=[boxes, gs.Constant("boxes/inv_scales:0", factors)],
                               outputs=[scaled]))
    log.info("box encodings divided by the box coder's scale factors %s", np.asarray(scales).tolist())
    return scaled


def add_box_decoder(graph, boxes, anchors, prefix="decode"):
    """(ty, tx, th, tw) [N, A, 4] against (yc, xc, h, w) anchors -> (ymin, xmin, ymax, xmax) [N, A, 4], in pixels.

    The decoding EfficientNMS_TRT's box_coding 1 does inside the plugin, as ONNX ops.
    """
    op, const = _node_builder(graph, prefix)
    offsets = op("Mul", [op("Slice", [boxes, const("c0", [0]), const("c2", [2]), const("ax", [2])]),
                         const("anchor_sizes", anchors[..., 2:])])
    centers = op("Add", [offsets, const("anchor_centers", anchors[..., :2])])
    sizes = op("Mul", [op("Exp", [op("Slice", [boxes, const("c2b", [2]), const("c4", [4]), const("axb", [2])])]),
                       const("anchor_sizes_b", anchors[..., 2:])])
    half = op("Mul", [sizes, const("half", np.float32(0.5))])
    return op("Concat", [op("Sub", [centers, half]), op("Add", [centers, half])], axis=2)


def drop_boxes_outside(graph, boxes, scores, anchors, height, width):
    """Class logits of anchors whose decoded box lies entirely outside the H x W input set to -1e4 (dropped).

    TFOD's post-processing clips its NMS results to the image and discards those
    left without area, then keeps the best max_total_detections; the NMS plugins
    cannot, so without this such boxes would take output slots TFOD gives to
    real detections. Masking them before NMS gives TFOD's result except where a
    box outside the image would have suppressed an overlapping one inside it.
    """
    corners = add_box_decoder(graph, boxes, anchors, prefix="outside/decode")
    op, const = _node_builder(graph, "outside", default_dtype=np.bool_)

    def coordinate(index):  # [N, A, 1]
        return op("Slice", [corners, const(f"start{index}", [index]), const(f"end{index}", [index + 1]),
                            const(f"axis{index}", [2])], dtype=np.float32)

    ymin, xmin, ymax, xmax = (coordinate(i) for i in range(4))
    keep = op("And", [op("And", [op("Less", [ymin, const("height", np.float32(height))]),
                                 op("Less", [xmin, const("width", np.float32(width))])]),
                      op("And", [op("Greater", [ymax, const("zero_y", np.float32(0))]),
                                 op("Greater", [xmax, const("zero_x", np.float32(0))])])])  # [N, A, 1]
    masked = gs.Variable("outside/scores", dtype=np.float32)
    graph.nodes.append(gs.Node("Where", "outside/mask", inputs=[keep, scores, gs.Constant(
        "outside/dropped", np.array(-1e4, np.float32))], outputs=[masked]))
    log.info("anchors whose box falls entirely outside the %dx%d input are dropped before NMS", height, width)
    return masked


def add_efficient_nms(graph, boxes, scores, anchors, num_classes, max_detections, score_threshold,
                      iou_threshold, class_agnostic=False):
    """EfficientNMS_TRT with the fused box decoder (box_coding 1, sigmoid scores)."""
    attrs = {
        "plugin_version": "1",
        "background_class": -1,
        "max_output_boxes": int(max_detections),
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
        "score_activation": 1,
        "class_agnostic": int(bool(class_agnostic)),
        "box_coding": 1,
    }
    anchor_const = gs.Constant("nms/anchors:0", anchors.astype(np.float32))
    outputs = _nms_outputs(max_detections, np.int32)
    graph.nodes.append(gs.Node("EfficientNMS_TRT", "nms/non_maximum_suppression", attrs=attrs,
                               inputs=[boxes, scores, anchor_const], outputs=outputs))
    graph.outputs = outputs
    log.info("added EfficientNMS_TRT (%d classes) %s", num_classes, attrs)
    return outputs


def add_onnx_nms(graph, boxes, scores, anchors, num_classes, max_detections, score_threshold, iou_threshold):
    """The same four outputs from standard ONNX ops, ending in NonMaxSuppression (no plugin needed).

    For TensorRT versions without EfficientNMS_TRT (deprecated since 10.12;
    NonMaxSuppression maps to TensorRT's INMSLayer) and plain ONNX Runtime:
    decode the boxes against the anchors as the plugin does, sigmoid the
    scores, per-class NonMaxSuppression, then the best `max_detections` of
    each image by score (TopK over a dense [N, C*A] score map). Add it after
    constant folding: its shapes follow the real batch.
    """
    op, const = _node_builder(graph, "nms")
    num_anchors = anchors.shape[1]
    corners = add_box_decoder(graph, boxes, anchors, prefix="nms/decode")  # [N, A, 4]
    probabilities = op("Sigmoid", [scores])  # [N, A, C]
    per_class = op("Transpose", [probabilities], perm=[0, 2, 1])  # [N, C, A]
    limits = [const("max_per_class", np.array([max_detections], np.int64)),
              const("iou", np.array([iou_threshold], np.float32)),
              const("score", np.array([score_threshold], np.float32))]
    selected = op("NonMaxSuppression", [corners, per_class, *limits], dtype=np.int64)
    picked = op("GatherND", [per_class, selected])  # [K] scores of the kept (image, class, anchor)
    image_ids = op("Slice", [selected, const("s0", [0]), const("s1", [1]), const("sax", [1])], dtype=np.int64)
    class_ids = op("Slice", [selected, const("s1b", [1]), const("s2", [2]), const("saxb", [1])], dtype=np.int64)
    anchor_ids = op("Slice", [selected, const("s2b", [2]), const("s3", [3]), const("saxc", [1])], dtype=np.int64)
    flat = op("Add", [op("Mul", [class_ids, const("stride", np.array(num_anchors, np.int64))], dtype=np.int64),
                      anchor_ids], dtype=np.int64)
    positions = op("Concat", [image_ids, flat], dtype=np.int64, axis=1)  # [K, 2] into [N, C*A]
    batch = op("Slice", [op("Shape", [scores], dtype=np.int64), const("b0", [0]), const("b1", [1])], dtype=np.int64)
    dense_shape = op("Concat", [batch, const("dense", np.array([num_classes * num_anchors], np.int64))],
                     dtype=np.int64, axis=0)
    empty = op("Expand", [const("minus_one", np.float32(-1.0)), dense_shape])
    dense = op("ScatterND", [empty, positions, picked])  # kept scores, -1 elsewhere
    top_scores, top_index, kept = _top_k(graph, op, const, "nms", dense, max_detections)
    top_anchor = op("Mod", [top_index, const("anchors_n", np.array(num_anchors, np.int64))], dtype=np.int64)
    top_class = op("Div", [top_index, const("anchors_d", np.array(num_anchors, np.int64))], dtype=np.int64)
    top_boxes = _gather_boxes(op, const, corners, top_anchor, batch, max_detections)
    classes = op("Cast", [top_class], to=onnx.TensorProto.INT32, dtype=np.int32)
    outputs = _kept_outputs(graph, op, const, "nms", kept, top_boxes, top_scores, classes, max_detections)
    log.info("added ONNX NonMaxSuppression route (%d classes, max %d, IoU %g, score %g)", num_classes,
             max_detections, iou_threshold, score_threshold)
    return outputs


def add_batched_nms(graph, decoded_boxes, scores, num_classes, max_detections, score_threshold, iou_threshold):
    """BatchedNMS_TRT (TensorRT < 8): decoded pixel boxes [N,A,1,4] and sigmoid scores."""
    boxes4 = gs.Variable("nms/boxes", dtype=np.float32)
    graph.nodes.append(gs.Node("Unsqueeze", "nms/boxes_unsqueeze",
                               inputs=[decoded_boxes, gs.Constant("nms/axes:0", np.array([2], np.int64))],
                               outputs=[boxes4]))
    probabilities = gs.Variable("nms/scores", dtype=np.float32)
    graph.nodes.append(gs.Node("Sigmoid", "nms/scores_sigmoid", inputs=[scores], outputs=[probabilities]))
    attrs = {
        "plugin_version": "1",
        "shareLocation": 1,
        "backgroundLabelId": -1,
        "numClasses": int(num_classes),
        "topK": 1024,
        "keepTopK": int(max_detections),
        "scoreThreshold": float(score_threshold),
        "iouThreshold": float(iou_threshold),
        "isNormalized": 0,
        "clipBoxes": 0,
    }
    outputs = _nms_outputs(max_detections, np.float32)
    graph.nodes.append(gs.Node("BatchedNMS_TRT", "nms/batched_nms", attrs=attrs,
                               inputs=[boxes4, probabilities], outputs=outputs))
    graph.outputs = outputs
    log.info("added BatchedNMS_TRT %s", attrs)
    return outputs


WINDOW_INPUT = "image_size"  # create_onnx.py --clip_to_image: each image's (height, width) inside the canvas
CLIP_CANDIDATES = 4  # --clip_to_image: the NMS keeps this many times max_detections before the window prunes


def add_image_window(graph, max_detections):
    """TFOD's clip window after the NMS: a second input `image_size` [N, 2] (each image's height and width in
    model pixels, the part of the canvas that is not padding), the NMS results clipped to it, those left
    without area dropped and the best `max_detections` kept, as TFOD's multiclass_non_max_suppression does
    with its clip_window (core/post_processing.py: NMS on the unclipped boxes, then _clip_window_prune_boxes,
    then max_total_size). The NMS before it must keep more candidates (CLIP_CANDIDATES x max_detections).
    """
    _, boxes, scores, classes = graph.outputs  # rows past the candidates' count have no area: dropped below
    for tensor in graph.outputs:
        tensor.name, tensor.shape = f"window/candidate_{tensor.name}", None
    op, const = _node_builder(graph, "window")
    size = gs.Variable(WINDOW_INPUT, dtype=np.float32, shape=[graph.inputs[0].shape[0], 2])
    graph.inputs.append(size)
    limits = op("Unsqueeze", [op("Concat", [size, size], axis=1), const("rows", np.array([1], np.int64))])
    clipped = op("Max", [op("Min", [boxes, limits]), const("zero", np.float32(0.0))])  # [N, K', 4]

    def side(low, high):  # [N, K'] extent along one axis
        def corner(index):
            return op("Slice", [clipped, const(f"start{index}", [index]), const(f"end{index}", [index + 1]),
                                const(f"axis{index}", [2])])
        return op("Sub", [corner(high), corner(low)])

    area = op("Squeeze", [op("Mul", [side(0, 2), side(1, 3)]), const("squeeze", np.array([2], np.int64))])
    inside = op("Greater", [area, const("no_area", np.float32(0.0))], dtype=np.bool_)
    ranked = op("Where", [inside, scores, const("dropped", np.float32(-1.0))])
    top_scores, top_index, kept = _top_k(graph, op, const, "window", ranked, max_detections)
    batch = op("Slice", [op("Shape", [boxes], dtype=np.int64), const("b0", [0]), const("b1", [1])], dtype=np.int64)
    picked_boxes = _gather_boxes(op, const, clipped, top_index, batch, max_detections)
    picked_classes = op("GatherElements", [classes, top_index], dtype=classes.dtype, axis=1)
    outputs = _kept_outputs(graph, op, const, "window", kept, picked_boxes, top_scores, picked_classes,
                            max_detections)
    log.info("added the image window (input %s): NMS results clipped to each image, those without area "
             "dropped, the best %d kept", WINDOW_INPUT, max_detections)
    return outputs


def _top_k(graph, op, const, prefix, ranked, max_detections):
    """The best `max_detections` of ranked [N, M] scores (negative: not a detection) per image: their scores
    and indices [N, K], and which of them are detections (bool [N, K])."""
    top_scores = gs.Variable(f"{prefix}/top_scores", dtype=np.float32)
    top_index = gs.Variable(f"{prefix}/top_index", dtype=np.int64)
    graph.nodes.append(gs.Node("TopK", f"{prefix}/TopK", attrs={"axis": 1, "largest": 1, "sorted": 1},
                               inputs=[ranked, const("k", np.array([max_detections], np.int64))],
                               outputs=[top_scores, top_index]))
    kept = op("GreaterOrEqual", [top_scores, const("zero_score", np.float32(0.0))], dtype=np.bool_)
    return top_scores, top_index, kept


def _gather_boxes(op, const, boxes, index, batch, max_detections):
    """Rows `index` [N, K] of boxes [N, M, 4]: [N, K, 4] (batch: the [1] tensor holding N)."""
    index4 = op("Expand", [op("Unsqueeze", [index, const("u2", np.array([2], np.int64))], dtype=np.int64),
                           op("Concat", [batch, const("k4", np.array([max_detections, 4], np.int64))],
                              dtype=np.int64, axis=0)], dtype=np.int64)
    return op("GatherElements", [boxes, index4], axis=1)


def _kept_outputs(graph, op, const, prefix, kept, boxes, scores, classes, max_detections):
    """The four NMS outputs (the plugin's names, graph.outputs from now) from [N, K] candidates: boxes,
    scores and classes zeroed where not `kept`, num_detections the count kept (kept ones come first)."""
    outputs = _nms_outputs(max_detections, classes.dtype)
    kept4 = op("Unsqueeze", [kept, const("u2b", np.array([2], np.int64))], dtype=np.bool_)
    for output, mask, values in zip(outputs[1:], (kept4, kept, kept), (boxes, scores, classes)):
        graph.nodes.append(gs.Node("Where", f"{prefix}/{output.name}_out", outputs=[output], inputs=[
            mask, values, const(f"zero_{output.name}", np.zeros((), values.dtype or np.float32))]))
    graph.nodes.append(gs.Node("ReduceSum", f"{prefix}/num_detections_out", attrs={"keepdims": 1}, inputs=[
        op("Cast", [kept], to=onnx.TensorProto.INT32, dtype=np.int32), const("axis_k", np.array([1], np.int64))],
        outputs=[outputs[0]]))
    graph.outputs = outputs
    return outputs


def _nms_outputs(max_detections, class_dtype):
    return [
        gs.Variable(OUTPUT_NAMES[0], dtype=np.int32, shape=["N", 1]),
        gs.Variable(OUTPUT_NAMES[1], dtype=np.float32, shape=["N", max_detections, 4]),
        gs.Variable(OUTPUT_NAMES[2], dtype=np.float32, shape=["N", max_detections]),
        gs.Variable(OUTPUT_NAMES[3], dtype=class_dtype, shape=["N", max_detections]),
    ]


def cleanup(graph):
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    return graph


def infer_shapes(graph):
    """ONNX shape inference; returns a new graph (custom plugin nodes keep their declared shapes)."""
    return gs.import_onnx(onnx.shape_inference.infer_shapes(gs.export_onnx(graph)))


def fold_constants(graph, passes=3):
    """Alternate shape inference and constant folding (with shape folding) until nothing changes."""
    for _ in range(passes):
        before = len(graph.nodes)
        graph = infer_shapes(graph)
        graph.fold_constants(fold_shapes=True)
        cleanup(graph)
        if len(graph.nodes) == before:
            break
    log.info("folded constants: %d nodes left", len(graph.nodes))
    return infer_shapes(graph)


def nearest_source_indices(in_size, out_size):
    """Source rows TensorFlow's resize_nearest_neighbor reads for each output row.

    AutoML upsamples with tf.compat.v1.image.resize_nearest_neighbor
    (align_corners and half_pixel_centers off): row i reads
    min(floor(i * float32(in / out)), in - 1), in float32.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    positions = np.arange(out_size, dtype=np.float32)
    return np.minimum(np.floor(positions * scale), in_size - 1).astype(np.int64)


def proven_resize_scale(in_size, out_size, search_ulps=8):
    """A float32 scale for ONNX Resize (nearest, asymmetric, floor) that is exact for in -> out, or None.

    Exact means: the output size floor(in * scale) is `out` whether a runtime
    multiplies in float32 or float64 (out / in rounded to float32 can floor
    one short: 3 * float32(5/3) is 4.9999998 in float64), and every output
    row reads the row TensorFlow reads, whether the runtime divides by the
    scale (ONNX Runtime) or multiplies by its reciprocal. Candidates are the
    float32 values within `search_ulps` of out / in.
    """
    want = nearest_source_indices(in_size, out_size)
    positions = np.arange(out_size, dtype=np.float32)
    centre = np.float32(out_size) / np.float32(in_size)
    candidates = [centre]
    above = below = centre
    for _ in range(search_ulps):
        above, below = np.nextafter(above, np.float32(np.inf)), np.nextafter(below, np.float32(0))
        candidates += [above, below]
    for scale in candidates:
        sizes = (int(np.floor(np.float32(in_size) * scale)), int(np.floor(float(in_size) * float(scale))))
        if sizes != (out_size, out_size):
            continue
        reciprocal = np.float32(1) / scale
        if all(np.array_equal(np.minimum(np.floor(rows), in_size - 1), want)
               for rows in (positions / scale, positions * reciprocal)):
            return float(scale)
    return None


def _is_tf_nearest(node):
    return (node.attrs.get("mode", "nearest") == "nearest"
            and node.attrs.get("coordinate_transformation_mode", "half_pixel") == "asymmetric"
            and node.attrs.get("nearest_mode", "round_prefer_floor") == "floor")


def _resize_as_gathers(graph, node, in_hw, out_hw):
    """Replace a nearest Resize by Gathers of TensorFlow's exact source rows and columns (any sizes)."""
    current = node.inputs[0]
    for axis, (in_size, out_size) in zip((2, 3), zip(in_hw, out_hw)):
        if in_size == out_size:
            continue
        indices = gs.Constant(f"{node.name}/rows_axis{axis}", nearest_source_indices(in_size, out_size))
        out = gs.Variable(f"{node.name}/gather_axis{axis}", dtype=current.dtype)
        graph.nodes.append(gs.Node("Gather", f"{node.name}/gather_axis{axis}", attrs={"axis": axis},
                                   inputs=[current, indices], outputs=[out]))
        current = out
    graph.nodes.append(gs.Node("Identity", f"{node.name}/exact", inputs=[current], outputs=list(node.outputs)))
    node.outputs.clear()


def make_resizes_exact(graph):
    """Give every Resize constant scales that produce exactly the size (and the pixels) TensorFlow's graph does.

    TensorRT wants static scales, not shape-computed sizes; a scale of out / in
    rounded to float32 can give one row too few (Lite0 at 320: P7 3x3 -> P6
    5x5 came out 4x4, and the graph would not load). Nearest upsampling (all
    EfficientDet uses) gets a proven scale (`proven_resize_scale`), or where no
    float32 scale is exact, Gathers of TensorFlow's source rows and columns.
    """
    scaled = gathered = 0
    for node in list(graph.nodes):
        if node.op != "Resize" or len(node.inputs) < 3:
            continue
        data, output = node.inputs[0], node.outputs[0]
        spatial = (data.shape or [])[2:] + (output.shape or [])[2:]
        if len(spatial) != 4 or any(not isinstance(d, int) for d in spatial):
            raise UserError(f"cannot make {node.name} exact: its spatial shape is not static")
        in_hw, out_hw = spatial[:2], spatial[2:]
        if _is_tf_nearest(node):
            scales = [proven_resize_scale(i, o) if i != o else 1.0 for i, o in zip(in_hw, out_hw)]
        else:
            scales = [o / i for i, o in zip(in_hw, out_hw)]
            if any(int(np.floor(np.float32(i) * np.float32(s))) != o for i, o, s in zip(in_hw, out_hw, scales)):
                raise UserError(f"{node.name} ({node.attrs.get('mode')}) resizes {in_hw} to {out_hw}, which no "
                                "constant scale reproduces; export the model at a size whose feature maps halve evenly")
        if any(scale is None for scale in scales):
            _resize_as_gathers(graph, node, in_hw, out_hw)
            gathered += 1
            continue
        roi = node.inputs[1]
        node.inputs = [data, roi, gs.Constant(f"{node.name}/scales", np.array([1.0, 1.0] + scales, np.float32))]
        scaled += 1
    cleanup(graph)
    log.info("resizes: %d with exact constant scales, %d as exact Gathers", scaled, gathered)


def make_reshapes_batch_agnostic(graph, batch):
    """Reshape targets that start with the static analysis batch get -1 there (others made explicit)."""
    changed = 0
    for node in graph.nodes:
        if node.op != "Reshape":
            continue
        target = constant_value(node.inputs[1])
        out_shape = node.outputs[0].shape
        if target is None or target.size < 2 or out_shape is None or len(out_shape) != target.size:
            continue
        if target[0] not in (batch, 0, -1) or out_shape[0] != batch:
            continue
        if any(not isinstance(d, int) for d in out_shape[1:]):
            continue
        new_target = np.array([-1] + [int(d) for d in out_shape[1:]], np.int64)
        if not np.array_equal(new_target, target):
            node.inputs[1] = gs.Constant(f"{node.name}/batch_agnostic_shape", new_target)
            changed += 1
    log.info("made %d Reshape nodes batch-agnostic", changed)


def set_batch_dim(graph, batch):
    """Set the batch dimension of the input and of the four outputs (int or 'N')."""
    for tensor in list(graph.inputs) + list(graph.outputs):
        if tensor.shape:
            tensor.shape = [batch] + list(tensor.shape[1:])
    # Intermediate shapes were inferred at the analysis batch: drop them so
    # they are re-inferred (or left to the runtime) for the real batch.
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
            tensor.shape = None
