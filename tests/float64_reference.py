"""An AutoML fixture's own TensorFlow graph run in float64: the exact heads that float32 runs are judged against.

Two float32 implementations of one network (TensorFlow's kernels and ONNX
Runtime's) each round differently; on a deep model with large logits the two
can differ by more than either differs from the exact result. This runs the
SavedModel's frozen network, from the stem convolution's input to the heads,
with every float32 tensor and kernel in float64. TensorFlow has no float64
FusedBatchNorm, so each (inference-mode) one is written out as its CPU kernel
computes it: scale' = scale * rsqrt(variance + epsilon), x * scale' + (offset -
mean * scale'). The stem's input is TensorFlow's own float32 preprocessing of
the image, so the float32 and float64 runs see the same pixels.
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, types_pb2

FLOAT, DOUBLE = types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE
BATCHNORMS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


def _add_node(graph_def, op, name, inputs=(), **attrs):
    node = graph_def.node.add()
    node.op, node.name = op, name
    node.input.extend(inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return name


def _write_batchnorm(graph_def, node):
    """The inference-mode FusedBatchNorm `node` as float64 arithmetic, its output keeping the node's name."""
    assert not node.attr["is_training"].b and node.attr["data_format"].s in (b"", b"NHWC"), node.name
    double = attr_value_pb2.AttrValue(type=DOUBLE)
    x, scale, offset, mean, variance = node.input[:5]
    epsilon = tf.make_tensor_proto(np.float64(node.attr["epsilon"].f))
    eps = _add_node(graph_def, "Const", node.name + "/f64/epsilon", dtype=double,
                    value=attr_value_pb2.AttrValue(tensor=epsilon))
    shifted = _add_node(graph_def, "AddV2", node.name + "/f64/variance", [variance, eps], T=double)
    inverse = _add_node(graph_def, "Rsqrt", node.name + "/f64/rsqrt", [shifted], T=double)
    factor = _add_node(graph_def, "Mul", node.name + "/f64/scale", [scale, inverse], T=double)
    moved = _add_node(graph_def, "Mul", node.name + "/f64/mean", [mean, factor], T=double)
    bias = _add_node(graph_def, "Sub", node.name + "/f64/offset", [offset, moved], T=double)
    scaled = _add_node(graph_def, "Mul", node.name + "/f64/x", [x, factor], T=double)
    _add_node(graph_def, "AddV2", node.name, [scaled, bias], T=double)


def _as_float64(node, graph_def):
    """A copy of `node` in `graph_def` with its float32 types and constants made float64."""
    copy = graph_def.node.add()
    copy.CopyFrom(node)
    for value in copy.attr.values():
        if value.HasField("type") and value.type == FLOAT:
            value.type = DOUBLE
        if value.HasField("list") and FLOAT in value.list.type:
            value.list.type[:] = [DOUBLE if kind == FLOAT else kind for kind in value.list.type]
    if copy.op == "Const" and node.attr["dtype"].type == FLOAT:
        values = tf.make_ndarray(node.attr["value"].tensor).astype(np.float64)
        copy.attr["value"].CopyFrom(attr_value_pb2.AttrValue(tensor=tf.make_tensor_proto(values)))


class Float64Heads:
    """The heads `tensors` (e.g. 'concat:0') of a conftest.TFReference's model, computed in float64."""

    def __init__(self, reference, tensors):
        self.reference, self.tensors = reference, list(tensors)
        heads = sorted({name.split(":")[0] for name in self.tensors})
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
            reference.session, reference.graph.as_graph_def(), heads)
        stems = [node for node in frozen.node if node.op == "Conv2D" and "/stem/" in node.name]
        assert len(stems) == 1, [node.name for node in stems]
        start = stems[0].input[0].split(":")[0]
        assert stems[0].input[0] in (start, start + ":0"), stems[0].input[0]
        self.stem_input = start + ":0"
        network = tf.compat.v1.GraphDef()
        for node in tf.compat.v1.graph_util.extract_sub_graph(frozen, heads).node:
            if node.name == start:
                _add_node(network, "Placeholder", start, dtype=attr_value_pb2.AttrValue(type=DOUBLE))
            elif node.op in BATCHNORMS:
                _write_batchnorm(network, node)
            else:
                _as_float64(node, network)
        network = tf.compat.v1.graph_util.extract_sub_graph(network, heads)
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(network, name="")
        kinds = {op.type for op in graph.get_operations()}
        assert start in {op.name for op in graph.get_operations()} and not kinds & set(BATCHNORMS)
        self.session = tf.compat.v1.Session(graph=graph)

    def run(self, image):
        """The heads for one uint8 image, in float64 (in the order of `tensors`)."""
        pixels = self.reference.run([self.stem_input], image)[0]
        return self.session.run(self.tensors, {self.stem_input: pixels.astype(np.float64)})
