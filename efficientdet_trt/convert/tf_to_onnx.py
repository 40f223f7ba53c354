"""TensorFlow SavedModel -> raw ONNX (tf2onnx), and what the TF graph says about itself.

With run/tf_runner.py (TFSavedModelRunner), the only modules that import TensorFlow (inside
their functions), and the only one that imports tf2onnx.
"""

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from efficientdet_trt.core.common import UserError
from efficientdet_trt.core.metadata import AUTOML_FAMILY, TFOD_FAMILY

log = logging.getLogger("tf_to_onnx")

# Name scopes that identify the two EfficientDet families (see graph_surgery.py).
FAMILY_MARKERS = {
    AUTOML_FAMILY: "class_net/",
    TFOD_FAMILY: "/WeightSharedConvolutionalClassHead/",
}


@dataclass
class TFNmsConfig:
    """The NMS settings found in the TF graph's NonMaxSuppression op."""

    max_output_size: int
    iou_threshold: float
    score_threshold: float
    soft_nms_sigma: float = 0.0

    @property
    def is_soft(self):
        return self.soft_nms_sigma > 0


def check_saved_model_path(path):
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder; pass the SavedModel folder with --saved_model")
    if not os.path.isdir(path):
        raise UserError(f"{path}: not a folder; --saved_model takes a SavedModel folder (with saved_model.pb inside)")
    if not any(os.path.isfile(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise UserError(f"{path}: not a TensorFlow SavedModel (no saved_model.pb); export one with AutoML's "
                        "model_inspect.py --runmode=saved_model or the TF2 Object Detection API exporter")


def _serving_meta_graph(path):
    """The SavedModel's MetaGraphDef tagged 'serve', read from saved_model.pb(txt) without loading the model."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    binary = os.path.join(path, "saved_model.pb")
    try:
        if os.path.isfile(binary):
            with open(binary, "rb") as stream:
                saved.ParseFromString(stream.read())
        else:
            with open(os.path.join(path, "saved_model.pbtxt")) as stream:
                text_format.Parse(stream.read(), saved)
    except Exception as error:  # protobuf raises DecodeError or ParseError for a damaged file
        raise UserError(f"{path}: saved_model.pb cannot be read ({type(error).__name__}); the SavedModel "
                        "is damaged, export it again") from error
    for meta_graph in saved.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise UserError(f"{path}: the SavedModel has no graph tagged 'serve'; export it for serving")


def _all_node_defs(graph_def):
    """The graph's nodes and those of its function library (a TF2 model's graph lives there)."""
    return [*graph_def.node, *(node for function in graph_def.library.function for node in function.node_def)]


def _family_of_nodes(nodes):
    """AUTOML_FAMILY or TFOD_FAMILY by the name scopes among `nodes`; None if neither."""
    names = [node.name for node in nodes]
    for family, marker in FAMILY_MARKERS.items():
        if any(marker in name for name in names):
            return family
    return None


def _int_const(node):
    """The values of an int32/int64 Const NodeDef as a flat array, read without TensorFlow; None otherwise."""
    tensor = node.attr["value"].tensor
    dtype = {3: np.int32, 9: np.int64}.get(tensor.dtype)  # DT_INT32, DT_INT64
    if dtype is None:
        return None
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype)
    values = list(tensor.int_val if dtype == np.int32 else tensor.int64_val)
    count = int(np.prod([dim.size for dim in tensor.tensor_shape.dim]))
    if values and len(values) < count:  # TensorFlow stores a run of equal trailing values once
        values += [values[-1]] * (count - len(values))
    return np.array(values, dtype)


def read_family_and_consts(path, const_names):
    """(family, {name: int array}) of the SavedModel at `path`, from one read of its saved_model.pb without
    loading the model or TensorFlow: the family by the name scopes of its nodes (the graph's, or a TF2 model's
    function library), None if neither; and the int constants among `const_names` that it holds."""
    nodes = _all_node_defs(_serving_meta_graph(path).graph_def)
    wanted = set(const_names)
    found = {}
    for node in nodes:
        if node.op == "Const" and node.name in wanted and node.name not in found:
            value = _int_const(node)
            if value is not None:
                found[node.name] = value
    return _family_of_nodes(nodes), found


@contextlib.contextmanager
def _without_tf_deprecation_warnings():
    """The TF1 loading and freezing calls used on purpose each log a deprecation warning; hide those."""
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf_log.setLevel(level)


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ServingGraph:
    """A SavedModel's serving_default graph, open for reading and then frozen down to the tensors asked for.

    `graph_def` is the graph to read names and constants from; `outputs` maps
    the signature's output keys to tensor names; `frozen(tensors)` returns a
    frozen GraphDef that computes only `tensors` from `inputs`, which is what
    tf2onnx then converts. A TF1 SavedModel (AutoML's model_inspect.py export)
    is loaded in a TF1 session and only the part kept is frozen; a TF2 one
    (TFOD's exporter, Keras exports) is frozen whole by tf2onnx's loader and
    then cut.
    """

    def __init__(self, path):
        import tensorflow as tf

        check_saved_model_path(path)
        start = time.perf_counter()
        meta_graph = _serving_meta_graph(path)
        self.tf1 = not meta_graph.object_graph_def.nodes
        self._session = None
        if self.tf1:
            try:
                graph = tf.Graph()
                self._session = tf.compat.v1.Session(graph=graph)
                with graph.as_default(), _without_tf_deprecation_warnings():
                    tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
                signature = meta_graph.signature_def["serving_default"]
            except Exception as error:  # TensorFlow raises many types for unreadable models
                self.close()
                raise _load_error(path, error) from error
            self.inputs = [tensor.name for tensor in signature.inputs.values()]
            self.outputs = {key: tensor.name for key, tensor in signature.outputs.items()}
            self.graph_def = graph.as_graph_def()
        else:
            self.graph_def, self.inputs, names, renames = _load_with_tf2onnx(path)
            self.outputs = {renames.get(name, name): name for name in names}
        log.info("loaded %s SavedModel %s in %.1f s (%d TF nodes, inputs %s, outputs %s)", "TF1" if self.tf1 else "TF2",
                 path, time.perf_counter() - start, len(self.graph_def.node), self.inputs, sorted(self.outputs))

    def frozen(self, tensors):
        """A frozen GraphDef with only the nodes `tensors` (names such as 'concat:0') need."""
        import tensorflow as tf

        nodes = sorted({name.split(":")[0] for name in tensors})
        with _without_tf_deprecation_warnings():
            if self._session is not None:
                graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(self._session, self.graph_def,
                                                                                   nodes)
            else:
                graph_def = tf.compat.v1.graph_util.extract_sub_graph(self.graph_def, nodes)
        log.info("kept %d of the graph's %d TF nodes for %s", len(graph_def.node), len(self.graph_def.node),
                 ", ".join(tensors))
        return graph_def

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _load_error(path, error):
    return UserError(f"{path}: TensorFlow could not load this SavedModel's serving_default signature "
                     f"({_first_line(error)})")


def _load_with_tf2onnx(path):
    """tf2onnx's loader: the whole serving signature frozen. Returns (graph_def, inputs, outputs, renames), where
    renames maps output tensor names to the signature's output keys."""
    from tf2onnx import tf_loader

    try:
        return tuple(tf_loader.from_saved_model(path, None, None, tag="serve", signatures=["serving_default"],
                                                return_tensors_to_rename=True))
    except Exception as error:  # TensorFlow raises many types for unreadable models
        raise _load_error(path, error) from error


def load_frozen_graph(path):
    """The whole serving signature as a frozen GraphDef (tf2onnx's own loader, post-processing included).

    Returns (graph_def, input_names, output_names).
    """
    check_saved_model_path(path)
    start = time.perf_counter()
    graph_def, inputs, outputs, _ = _load_with_tf2onnx(path)
    log.info("loaded SavedModel %s in %.1f s (%d TF nodes, inputs %s, outputs %s)", path,
             time.perf_counter() - start, len(graph_def.node), inputs, outputs)
    return graph_def, inputs, outputs


def detect_family(graph_def, path="SavedModel"):
    family = _family_of_nodes(graph_def.node)
    if family is not None:
        log.info("recognised a %s EfficientDet graph",
                 "AutoML" if family == AUTOML_FAMILY else "TF2 Object Detection API")
        return family
    raise UserError(f"{path}: not an EfficientDet model (no 'class_net/' or "
                    "'WeightSharedConvolutionalClassHead' nodes); this tool converts AutoML and "
                    "TF2 Object Detection API EfficientDet SavedModels")


def _const_value(graph_def, tensor_name):
    """Value of a Const feeding `tensor_name`, following Identity nodes; None if not constant."""
    import tensorflow as tf

    nodes = {node.name: node for node in graph_def.node}
    name = _node_name(tensor_name)
    while name in nodes and nodes[name].op == "Identity":
        name = _node_name(nodes[name].input[0])
    node = nodes.get(name)
    if node is None or node.op != "Const":
        return None
    return tf.make_ndarray(node.attr["value"].tensor)


def read_nms_config(graph_def):
    """Find the TF NonMaxSuppression op and read its constant settings."""
    for node in graph_def.node:
        if node.op in ("NonMaxSuppressionV5", "NonMaxSuppressionV4", "NonMaxSuppressionV3"):
            values = [_const_value(graph_def, name) for name in node.input[2:]]
            if any(value is None for value in values[:3]):
                continue
            sigma = float(values[3]) if len(values) > 3 and values[3] is not None else 0.0
            config = TFNmsConfig(int(values[0]), float(values[1]), float(values[2]), sigma)
            log.info("TF NMS (%s): max %d, IoU %.3g, score %.3g%s", node.name, config.max_output_size,
                     config.iou_threshold, config.score_threshold,
                     f", soft-NMS sigma {sigma:.3g}" if config.is_soft else "")
            return config
    return None


def _node_name(tensor_or_input):
    """'scope/op:1' or '^scope/op' -> 'scope/op'."""
    return tensor_or_input.split(":")[0].lstrip("^")


def _consumers(graph_def):
    found = {}
    for node in graph_def.node:
        for name in node.input:
            found.setdefault(_node_name(name), []).append(node)
    return found


def find_head_concat(graph_def, scope):
    """Name of the ConcatV2 joining a head's per-level Reshapes whose inputs come from `scope` (the TF
    counterpart of graph_surgery.find_head_concat); None if there is none."""
    nodes = {node.name: node for node in graph_def.node}

    def from_scope(name, depth=6):
        for _ in range(depth):
            node = nodes.get(_node_name(name))
            if node is None:
                return False
            if scope in node.name:
                return True
            if not node.input:
                return False
            name = node.input[0]
        return False

    for node in graph_def.node:
        parts = [nodes.get(_node_name(name)) for name in node.input[:-1]]  # the last input is the axis
        if node.op == "ConcatV2" and len(parts) >= 3 and all(
                part is not None and part.op == "Reshape" and from_scope(part.input[0]) for part in parts):
            return node.name
    return None


def find_consumer(graph_def, start, op, num_inputs):
    """Name of the first `op` node with `num_inputs` inputs found breadth-first below node `start`."""
    consumers = _consumers(graph_def)
    seen, queue = {start}, [start]
    while queue:
        for node in consumers.get(queue.pop(0), []):
            if node.name in seen:
                continue
            if node.op == op and len(node.input) == num_inputs:
                return node.name
            seen.add(node.name)
            queue.append(node.name)
    return None


def find_const(graph_def, suffix):
    """Value of the Const whose name ends with `suffix`, None if there is none."""
    import tensorflow as tf

    for node in graph_def.node:
        if node.op == "Const" and node.name.endswith(suffix):
            return tf.make_ndarray(node.attr["value"].tensor)
    return None


@contextlib.contextmanager
def _fresh_node_protos():
    """While tf2onnx converts, rebuild each node's NodeProto instead of rewriting it in place.

    tf2onnx rewrites every node's NodeProto after each optimizer pass (Node.update_proto
    clears the attributes and appends them again). With protobuf's upb backend the
    cleared attributes, weights included, stay in the message's memory until the
    message itself goes, so a D0 grows by about one copy of its weights per pass
    (~400 MB over the ~36 passes). A new NodeProto per rewrite frees the old one;
    the graph tf2onnx returns is the same.
    """
    import onnx
    from tf2onnx import graph as tf2onnx_graph

    rewrite = tf2onnx_graph.Node.update_proto
    rewritten = ("input", "output", "attribute")

    def update_proto(node, external_tensor_storage=None):
        fresh = onnx.NodeProto()
        for field, value in node._op.ListFields():  # name, op_type, domain, doc string
            if field.name not in rewritten:
                setattr(fresh, field.name, value)
        node._op = fresh
        rewrite(node, external_tensor_storage)

    tf2onnx_graph.Node.update_proto = update_proto
    try:
        yield
    finally:
        tf2onnx_graph.Node.update_proto = rewrite


def _convert_frozen(graph_def, inputs, outputs, opset):
    """tf2onnx.convert.from_graph_def without its first step, for a graph that is already frozen.

    from_graph_def imports the graph into a session and freezes it, then throws
    that frozen copy away and goes on from the GraphDef it was given (tf2onnx
    1.17): on D0 that is about 0.7 s of nothing. What is left is its own two
    steps, called the same way: grappler's TF passes, then the conversion and
    ONNX optimizers.
    """
    import tensorflow as tf
    from tf2onnx import convert, tf_loader

    with tf.device("/cpu:0"), tf.Graph().as_default():  # grappler's meta-graph export needs graph mode
        optimized = tf_loader.tf_optimize(inputs, outputs, graph_def)
    return convert._convert_common(optimized, name="unknown", continue_on_error=True, opset=opset,
                                   input_names=inputs, output_names=outputs)[0]


def convert_to_onnx(graph_def, inputs, outputs, opset=13, copy_per_pass=False):
    """Run tf2onnx on the frozen graph and return the ONNX ModelProto.

    tf2onnx copies the whole graph before each of its ~36 optimizer passes so
    that it can skip a pass that fails; that copying is about half its time.
    Unless `copy_per_pass` (tf2onnx's default behaviour, kept for the full-graph
    path), the conversion runs without it, with `_fresh_node_protos` and without
    from_graph_def's redundant freezing (`_convert_frozen`), first and, only if
    a pass fails, again with the copying.
    """
    import tf2onnx
    from tf2onnx import constants

    def convert(catch_errors):
        os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = "TRUE" if catch_errors else "FALSE"
        if copy_per_pass:
            return tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                                  opset=opset)[0]
        with _fresh_node_protos():
            return _convert_frozen(graph_def, inputs, outputs, opset)

    start = time.perf_counter()
    previous = os.environ.get(constants.ENV_TF2ONNX_CATCH_ERRORS)
    try:
        if copy_per_pass:
            model = convert(catch_errors=True)
        else:
            try:
                model = convert(catch_errors=False)
            except Exception as error:  # an optimizer pass failed: let tf2onnx skip it instead
                log.warning("a tf2onnx optimizer failed (%s); converting again with failing optimizers skipped",
                            _first_line(error))
                model = convert(catch_errors=True)
    finally:
        if previous is None:
            os.environ.pop(constants.ENV_TF2ONNX_CATCH_ERRORS, None)
        else:
            os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = previous
    log.info("tf2onnx %s: %d ONNX nodes (opset %d) in %.1f s", tf2onnx.__version__, len(model.graph.node),
             opset, time.perf_counter() - start)
    return model
