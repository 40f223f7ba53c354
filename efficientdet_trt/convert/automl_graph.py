"""What an AutoML EfficientDet's graph holds: the TF tensors to convert, and the parts found in tf2onnx's output.

The AutoML family's one home (tfod_graph.py is TFOD's): `tf_outputs` names the
TensorFlow tensors the conversion stops at, `recognise` returns the
`graph_surgery.ModelParts` the shared surgery needs. An AutoML export
(model_inspect.py --runmode saved_model) has:

- preprocessing: cast, (x - mean) * 1/std, AutoML's resize and a crop/pad Slice
  to the model's image_size, then the stem conv `.../stem/conv2d`;
- the heads, per level Reshape -> Concat: `class_net/` logits [N, A, C] and
  `box_net/` encodings [N, A, 4] as (ty, tx, th, tw);
- the box decoder: a 4-way Split of the box encodings, then Add (y, x centres)
  and Mul (heights, widths) with the anchors as constants, and a Concat of the
  decoded (ymin, xmin, ymax, xmax) in input pixels.
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

log = logging.getLogger("automl_graph")

STEM_SCOPE = "/stem/"
CLASS_HEAD_SCOPE = "class_net/"
BOX_HEAD_SCOPE = "box_net/"
# The exported (H, W) in the TF graph, read before conversion: image_preprocess pads the resized image with
# tf.image.pad_to_bounding_box(image, 0, 0, H, W), whose W - width and H - height subtractions hold the sizes.
TF_SIZE_CONSTS = ("pad_to_bounding_box/sub_1/x", "pad_to_bounding_box/sub/x")


def find_stem(graph):
    convs = [node for node in graph.nodes if node.op == "Conv" and STEM_SCOPE in node.name]
    if not convs:
        raise UserError(f"no stem convolution ('{STEM_SCOPE}') found in the converted AutoML graph")
    return convs[0]


def find_input_normalization(graph, stem):
    """Read the model's own mean/std from the Sub and Mul/Div constants before the stem.

    AutoML normalises with `(x - mean) / std` (mean, std per channel, shape [1,1,3]);
    tf2onnx keeps those constants. Returns None when they cannot be found.
    """
    mean = inv_std = None
    for node in ancestors(stem):
        values = [constant_value(t) for t in node.inputs]
        consts = [v for v in values if v is not None and v.size in (1, 3) and v.dtype.kind == "f"]
        if not consts:
            continue
        if node.op == "Sub" and mean is None and values[1] is not None:
            mean = np.broadcast_to(values[1].reshape(-1), (3,)).astype(np.float32)
        elif node.op == "Mul" and inv_std is None:
            inv_std = np.broadcast_to(consts[0].reshape(-1), (3,)).astype(np.float32)
        elif node.op == "Div" and inv_std is None and values[1] is not None:
            inv_std = (1.0 / np.broadcast_to(values[1].reshape(-1), (3,))).astype(np.float32)
    if mean is None or inv_std is None:
        return None
    std = 1.0 / inv_std.astype(np.float64)
    return Normalization(mean, inv_std, f"model (mean {np.round(mean.astype(np.float64), 3).tolist()}, "
                                        f"std {np.round(std, 3).tolist()})")


def find_model_input_size(graph, stem):
    """The (H, W) AutoML crops/pads to before the stem, from the crop Slice's ends."""
    for node in ancestors(stem):
        if node.op == "Slice" and len(node.inputs) >= 3:
            ends = constant_value(node.inputs[2])
            if ends is not None and ends.size == 3 and ends[2] > 1 << 20 and ends[0] > 0 and ends[1] > 0:
                return int(ends[0]), int(ends[1])
    return None


def find_box_split(box_concat):
    for consumer in box_concat.outputs[0].outputs:
        if consumer.op == "Split" and len(consumer.outputs) == 4:
            return consumer
    raise UserError("cannot find the box decoder's 4-way Split after the box head")


def _first_descendant(tensor, op, limit=6):
    """First node of type `op` below `tensor` following first consumers."""
    current = tensor
    for _ in range(limit):
        if not current.outputs:
            return None
        node = current.outputs[0]
        if node.op == op:
            return node
        current = node.outputs[0]
    return None


def extract_anchors(split):
    """Anchors [1, A, 4] as (y_c, x_c, h, w) from the box decoder's Add/Mul constants."""
    columns = []
    for index, op in ((0, "Add"), (1, "Add"), (2, "Mul"), (3, "Mul")):
        node = _first_descendant(split.outputs[index], op)
        values = None
        if node is not None:
            found = [constant_value(t) for t in node.inputs]
            values = next((v for v in found if v is not None and v.size > 1), None)
        if values is None:
            raise UserError(f"cannot read the anchors from the box decoder (output {index} of {split.name})")
        columns.append(values.reshape(-1).astype(np.float32))
    if len({c.size for c in columns}) != 1:
        raise UserError("the box decoder's anchor constants have different lengths")
    anchors = np.stack(columns, axis=-1)[None]
    log.info("extracted %d anchors from the box decoder", anchors.shape[1])
    return anchors


def find_box_decoder_output(split):
    """The Concat that stacks the decoded (ymin, xmin, ymax, xmax) boxes."""
    seen, queue = set(), [split]
    while queue:
        node = queue.pop(0)
        for tensor in node.outputs:
            for consumer in tensor.outputs:
                if id(consumer) in seen:
                    continue
                seen.add(id(consumer))
                if consumer.op == "Concat" and len(consumer.inputs) == 4:
                    return consumer
                queue.append(consumer)
    raise UserError("cannot find the box decoder's output Concat")


def tf_outputs(graph_def, serving_outputs):
    """The TF tensors the conversion keeps: both heads and the box decoder's stacked boxes (everything the
    ONNX side reads is computed on the way to them; the NMS and the output packing after them are not)."""
    heads = [tf_to_onnx.find_head_concat(graph_def, scope) for scope in (CLASS_HEAD_SCOPE, BOX_HEAD_SCOPE)]
    if None in heads:
        raise UserError(f"cannot find the '{CLASS_HEAD_SCOPE}' and '{BOX_HEAD_SCOPE}' heads' output Concats "
                        "in the TensorFlow graph")
    decoded = tf_to_onnx.find_consumer(graph_def, heads[1], "Pack", 4)
    if decoded is None:
        raise UserError("cannot find the box decoder's stacked (ymin, xmin, ymax, xmax) boxes in the "
                        "TensorFlow graph")
    return [f"{name}:0" for name in (*heads, decoded)]


def tf_max_detections(graph_def):
    """AutoML's NMS op carries the detection count itself (tf_to_onnx.read_nms_config)."""
    return None


def recognise(graph):
    stem = find_stem(graph)
    class_concat = find_head_concat(graph, CLASS_HEAD_SCOPE)
    box_concat = find_head_concat(graph, BOX_HEAD_SCOPE)
    split = find_box_split(box_concat)
    num_classes = int(constant_value(class_concat.inputs[0].inputs[0].inputs[1]).reshape(-1)[-1])
    log.info("heads: %s (%d classes), %s", class_concat.name, num_classes, box_concat.name)
    anchors = extract_anchors(split)  # already in input pixels: AutoML decodes in pixels
    return ModelParts(stem=stem, native_size=find_model_input_size(graph, stem),
                      normalization=find_input_normalization(graph, stem), class_head=class_concat.outputs[0],
                      box_head=box_concat.outputs[0], num_classes=num_classes,
                      anchors=lambda height, width: anchors,
                      decoded_boxes=find_box_decoder_output(split).outputs[0])
