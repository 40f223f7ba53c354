"""What a TF2 Object Detection API EfficientDet's graph holds: the TF tensors to convert, and the parts found
in tf2onnx's output.

The TFOD family's one home (automl_graph.py is AutoML's): `tf_outputs` names the
TensorFlow tensors the conversion stops at and `tf_max_detections` reads the
detection count from the TF graph; `recognise` returns the
`graph_surgery.ModelParts` the shared surgery needs. An exported TFOD
SSD graph (exporter_lib_v2, input `input_tensor`) has:

- preprocessing in a `map/while` Loop over the batch: x/255, minus the mean,
  divided by the std (`Preprocessor/truediv`, `sub`, `truediv_1`), then
  `ResizeToRange` (keep_aspect_ratio_resizer) to max_dimension and padding to
  max_dimension x max_dimension with zeros (the mean colour before normalising);
- the EfficientNet stem conv `.../stem_conv2d/Conv2D` fed by the Loop's output;
- the weight-shared heads, per level Reshape -> Concat: box encodings
  [N, A, 4] as (ty, tx, th, tw) and class logits [N, A, C] (no background class);
- `Postprocessor/Decode`: the faster_rcnn box coder against anchors normalised
  to the padded image, with scale factors (the zoo's EfficientDets use 1, other
  SSD configs 10, 10, 5, 5), its result exported as `raw_detection_boxes`;
  TensorFlow folds anchors and scales into constants in ways that differ per
  model, so both are measured by running the decoder (`probe_box_decoder`);
- `BatchMultiClassNonMaxSuppression`: sigmoid scores (`raw_detection_scores`),
  per-class NMS on the unclipped boxes, clipping to the image, dropping boxes
  left without area, then the best `max_total_detections`
  (`PadOrClipBoxList/sub/y`); boxes normalised to the image, classes as
  label-map ids (class index + 1).
"""

import logging

import numpy as np

from efficientdet_trt.convert import tf_to_onnx
from efficientdet_trt.convert.graph_surgery import (
    ModelParts,
    Normalization,
    ancestors,
    constant_value,
    find_head_concat,
)
from efficientdet_trt.core.common import UserError

log = logging.getLogger("tfod_graph")

STEM_SCOPE = "/stem_conv2d/"
CLASS_HEAD_SCOPE = "/WeightSharedConvolutionalClassHead/"
BOX_HEAD_SCOPE = "/WeightSharedConvolutionalBoxHead/"
# The exported (H, W) in the TF graph, read before conversion: the anchor generator normalises the anchors by
# the image's height and width (box_list_ops.to_normalized_coordinates casts each to float).
TF_SIZE_CONSTS = ("MultiscaleGridAnchorGenerator/ToNormalizedCoordinates/Cast/x",
                  "MultiscaleGridAnchorGenerator/ToNormalizedCoordinates/Cast_1/x")


def _all_nodes(graph):
    """Every node, including those in Loop/If bodies (TFOD's preprocessing runs in a map_fn Loop)."""
    stack = list(graph.nodes)
    while stack:
        node = stack.pop()
        yield node
        for value in node.attrs.values():
            if hasattr(value, "nodes"):
                stack.extend(value.nodes)


def find_stem(graph):
    convs = [node for node in graph.nodes if node.op == "Conv" and STEM_SCOPE in node.name]
    if not convs:
        raise UserError(f"no stem convolution ('{STEM_SCOPE}') found in the converted TFOD graph")
    return convs[0]


def find_normalization(graph):
    """The feature extractor's (x/255 - offset) / scale from the Preprocessor ops, as mean and std on 0-255."""
    values = {}
    for node in _all_nodes(graph):
        if "Preprocessor/" not in node.name or node.op not in ("Mul", "Div", "Sub"):
            continue
        stem = node.name.rsplit("Preprocessor/", 1)[1]
        constant = next((constant_value(t) for t in node.inputs if constant_value(t) is not None), None)
        if constant is None or constant.size not in (1, 3) or stem not in ("truediv", "sub", "truediv_1"):
            continue
        factor = constant.astype(np.float64).reshape(-1)
        values[stem] = 1.0 / factor if node.op == "Div" else factor
    if set(values) != {"truediv", "sub", "truediv_1"}:
        return None
    scale = 1.0 / values["truediv"]  # x * (1/255)
    offset, inv_channel_scale = values["sub"], values["truediv_1"]
    mean = np.broadcast_to(offset * scale, (3,))
    std = np.broadcast_to(scale / inv_channel_scale, (3,))
    return Normalization.from_mean_std(mean, std, f"model (mean {np.round(mean, 3).tolist()}, "
                                                  f"std {np.round(std, 3).tolist()})")


def find_input_size(graph):
    """(H, W) of the padded canvas: keep_aspect_ratio_resizer's max_dimension (ResizeToRange constants), or None."""
    sizes = set()
    for node in _all_nodes(graph):
        if "ResizeToRange/" in node.name and node.op == "Sub":
            first = constant_value(node.inputs[0])
            if first is not None and first.size == 1:
                sizes.add(int(first.reshape(-1)[0]))
    if not sizes:
        return None
    size = max(sizes)  # min_dimension and max_dimension; pad_to_max_dimension pads to the larger, square
    return size, size


def find_raw_output(graph, head, width):
    """The graph output TFOD computes from `head` before NMS: raw_detection_boxes [1, A, 4] from the box
    head, raw_detection_scores [1, A, C] from the class head (tf2onnx names them Identity_<n>:0)."""
    producer = head.inputs[0]
    for output in graph.outputs:
        if not output.inputs or output.shape is None or len(output.shape) != 3 or output.shape[-1] != width:
            continue
        if any(node is producer for node in [output.inputs[0], *ancestors(output.inputs[0], limit=400)]):
            return output
    return None


def probe_box_decoder(graph, box_head):
    """Anchors (yc, xc, h, w), normalised, and the box coder's scale factors, measured on TFOD's own decoder.

    The decoder's constants cannot be read off reliably: TensorFlow folds the
    anchors, and with them the scale factors, in different ways per model. So
    the decoder (box head -> raw_detection_boxes) is cut out and run in ONNX
    Runtime: zero encodings return the anchors themselves, encodings of one
    shift each centre by size / scale and grow each size by exp(1 / scale).
    """
    import onnxruntime as ort

    from efficientdet_trt.convert.graph_surgery import gs

    decoded = find_raw_output(graph, box_head, 4)
    if decoded is None:
        raise UserError("cannot find the TFOD graph's raw_detection_boxes output (the decoded boxes before NMS)")
    decoder = graph.copy()
    tensors = decoder.tensors()
    encodings, boxes = tensors[box_head.name], tensors[decoded.name]
    encodings.inputs.clear()
    encodings.dtype = np.float32
    decoder.inputs, decoder.outputs = [encodings], [boxes]
    decoder.cleanup()
    model = gs.export_onnx(decoder)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    count = int(decoded.shape[1])
    corners = [session.run(None, {encodings.name: np.full((1, count, 4), value, np.float32)})[0][0].astype(np.float64)
               for value in (0.0, 1.0)]
    centre = [(c[:, :2] + c[:, 2:]) / 2 for c in corners]
    size = [c[:, 2:] - c[:, :2] for c in corners]
    anchors = np.concatenate([centre[0], size[0]], axis=1)  # (yc, xc, h, w), normalised
    scales = np.concatenate([np.median(size[0] / (centre[1] - centre[0]), axis=0),
                             np.median(1.0 / np.log(size[1] / size[0]), axis=0)])
    return anchors, np.round(scales, 4)


RAW_OUTPUTS = ("raw_detection_boxes", "raw_detection_scores")


def tf_outputs(graph_def, serving_outputs):
    """The TF tensors the conversion keeps: the exporter's raw_detection_boxes (the decoded anchors) and
    raw_detection_scores (sigmoid of the class head); everything the ONNX side reads is computed on the way
    to them, BatchMultiClassNonMaxSuppression is not."""
    missing = [key for key in RAW_OUTPUTS if key not in serving_outputs]
    if missing:
        raise UserError(f"the serving signature has no {' or '.join(missing)} output (it has "
                        f"{', '.join(sorted(serving_outputs))}); export the model with TFOD's exporter_main_v2.py")
    return [serving_outputs[key] for key in RAW_OUTPUTS]


def tf_max_detections(graph_def):
    """max_total_detections: BatchMultiClassNonMaxSuppression pads or clips its result to it."""
    value = tf_to_onnx.find_const(graph_def, "PadOrClipBoxList/sub/y")
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def check_score_converter(graph, class_head, num_classes):
    scores = find_raw_output(graph, class_head, num_classes)
    converter = scores.inputs[0].op if scores is not None and scores.inputs else None
    if converter != "Sigmoid":
        raise UserError(f"this TFOD model's score converter is {converter or 'unknown'}; only SIGMOID (as every "
                        "EfficientDet config uses) maps onto TensorRT's NMS plugins")


def recognise(graph):
    stem = find_stem(graph)
    class_concat = find_head_concat(graph, CLASS_HEAD_SCOPE)
    box_concat = find_head_concat(graph, BOX_HEAD_SCOPE)
    # The per-level Reshape's target shape [N, -1, C] gives the class count.
    num_classes = int(constant_value(class_concat.inputs[0].inputs[0].inputs[1]).reshape(-1)[-1])
    check_score_converter(graph, class_concat.outputs[0], num_classes)
    anchors, scales = probe_box_decoder(graph, box_concat.outputs[0])
    log.info("TFOD heads: %s (%d classes), %s; %d anchors, box coder scales %s", class_concat.name, num_classes,
             box_concat.name, len(anchors), scales.tolist())
    return ModelParts(stem=stem, native_size=find_input_size(graph), normalization=find_normalization(graph),
                      class_head=class_concat.outputs[0], box_head=box_concat.outputs[0], num_classes=num_classes,
                      anchors=lambda height, width: (anchors * [height, width, height, width])[None].astype(np.float32),
                      box_scales=scales, drops_boxes_outside=True)
