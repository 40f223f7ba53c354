"""TensorFlow SavedModel -> raw ONNX (tf2onnx), and what the TF graph says about itself.

This is the only module that imports TensorFlow and tf2onnx.
"""

import logging
import os
import time
from dataclasses import dataclass

from common import UserError

log = logging.getLogger("tf_to_onnx")

AUTOML = "automl"
TFOD = "tfod"

# Name scopes that identify the two EfficientDet families (see graph_surgery.py).
FAMILY_MARKERS = {
    AUTOML: "class_net/",
    TFOD: "/WeightSharedConvolutionalClassHead/",
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


def load_frozen_graph(path):
    """Load a SavedModel's serving signature as a frozen GraphDef.

    Returns (graph_def, input_names, output_names).
    """
    check_saved_model_path(path)
    from tf2onnx import tf_loader

    start = time.perf_counter()
    try:
        graph_def, inputs, outputs = tf_loader.from_saved_model(path, None, None, tag="serve",
                                                                signatures=["serving_default"])[:3]
    except Exception as error:  # TensorFlow raises many types for unreadable models
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: TensorFlow could not load this SavedModel's serving_default signature "
                        f"({first_line})") from error
    log.info("loaded SavedModel %s in %.1f s (%d TF nodes, inputs %s, outputs %s)", path,
             time.perf_counter() - start, len(graph_def.node), inputs, outputs)
    return graph_def, inputs, outputs


def detect_family(graph_def, path="SavedModel"):
    names = [node.name for node in graph_def.node]
    for family, marker in FAMILY_MARKERS.items():
        if any(marker in name for name in names):
            log.info("recognised a %s EfficientDet graph", "AutoML" if family == AUTOML else "TF2 Object Detection API")
            return family
    raise UserError(f"{path}: not an EfficientDet model (no 'class_net/' or "
                    "'WeightSharedConvolutionalClassHead' nodes); this tool converts AutoML and "
                    "TF2 Object Detection API EfficientDet SavedModels")


def _const_value(graph_def, tensor_name):
    """Value of a Const feeding `tensor_name`, following Identity nodes; None if not constant."""
    import tensorflow as tf

    nodes = {node.name: node for node in graph_def.node}
    name = tensor_name.split(":")[0].lstrip("^")
    while name in nodes and nodes[name].op == "Identity":
        name = nodes[name].input[0].split(":")[0]
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


def convert_to_onnx(graph_def, inputs, outputs, opset=13):
    """Run tf2onnx on the frozen graph and return the ONNX ModelProto."""
    import tf2onnx

    start = time.perf_counter()
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=opset)
    log.info("tf2onnx %s: %d ONNX nodes (opset %d) in %.1f s", tf2onnx.__version__, len(model.graph.node),
             opset, time.perf_counter() - start)
    return model
