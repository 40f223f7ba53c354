"""ONNX models from create_onnx.py: loading and checking them, and running them on the CPU.

`OnnxCpuRunner` runs the converted ONNX in ONNX Runtime. TensorRT plugin nodes
(EfficientNMS_TRT, BatchedNMS_TRT) are run by the NumPy references in
nms_reference.py: the graph is cut at the plugin's inputs, ONNX Runtime
computes them, the reference finishes the job, and ONNX Runtime runs what
follows the plugin (the image window of a --clip_to_image graph).
"""

import logging
import os
from typing import NamedTuple, Optional

import numpy as np

from efficientdet_trt.core.common import UserError
from efficientdet_trt.run import nms_reference
from efficientdet_trt.run.runner import OUTPUT_NAMES, PLUGIN_OPS, WINDOW_INPUT, Runner, TensorSpec, image_layout

log = logging.getLogger("onnx_runner")


def onnx_input_shape(model):
    """The declared shape of an ONNX model's first input; None for dynamic dimensions."""
    return tuple(d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim)


def onnx_input_dtype(model):
    """The numpy type of an ONNX model's first input (float32, float16 or uint8 for this project's graphs)."""
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type))


def load_detector_onnx(path, load_external_data=True):
    """The ONNX ModelProto at `path`, refused in one line unless it is a detector graph create_onnx.py wrote."""
    import onnx

    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; give the .onnx file create_onnx.py wrote")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such ONNX file; create it with create_onnx.py")
    try:
        model = onnx.load(path, load_external_data=load_external_data)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise UserError(f"{path}: not a readable ONNX model ({type(error).__name__}); "
                        "re-create it with create_onnx.py") from None
    check_detector_graph(model, path)
    return model


def check_detector_graph(model, path):
    """One-line error unless `model` has the image input and the four detection outputs of create_onnx.py."""
    constants = {tensor.name for tensor in model.graph.initializer}
    inputs = [value.name for value in model.graph.input if value.name not in constants]
    outputs = {value.name for value in model.graph.output}
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if not inputs or missing:
        found = ("an empty file" if not model.graph.node else "no input" if not inputs
                 else f"no output {missing[0]}")
        raise UserError(f"{path}: not an EfficientDet detector graph from create_onnx.py ({found}); "
                        "convert the SavedModel with create_onnx.py")


def onnx_input_mean(model):
    """The RGB mean (0-255) the graph's preprocessing subtracts (create_onnx's preprocessor/mean:0), or None."""
    import onnx

    for tensor in model.graph.initializer:
        if tensor.name == "preprocessor/mean:0":
            values = onnx.numpy_helper.to_array(tensor).reshape(-1)
            return tuple(float(v) for v in np.broadcast_to(values, (3,)))
    return None


def onnx_metadata(model):
    """An ONNX model's metadata_props as a dict (create_onnx.py writes num_classes, efficientdet_family, ...)."""
    return {entry.key: entry.value for entry in model.metadata_props}


def cpu_session_options(layout_optimizations=True):
    """ONNX Runtime CPU session options for the converted graphs.

    layout_optimizations=False stops at ONNX Runtime's extended graph
    optimizations: no NCHWc-blocked convolutions, whose different float32
    summation order is about 2x faster here but puts the heads 17x further
    from TensorFlow's (D0 640x320: 1.5e-4 against 8.6e-6). For comparisons
    with TensorFlow, where the conversion alone should show.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not layout_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    # Run Q/DQ graphs as written (quantize, then dequantize in the graph's float
    # type). ONNX Runtime's QDQ fusions otherwise change FP16 Q/DQ graphs' results
    # (measured: 13% vs 6% relative error on the D0 fixture's heads).
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


class PluginNode(NamedTuple):
    """The NMS plugin node of a graph, which ONNX Runtime cannot run and nms_reference.py does."""

    op: str  # EfficientNMS_TRT, BatchedNMS_TRT, ...
    attrs: dict
    inputs: list  # tensor names, or the values of constant inputs (the anchors)
    outputs: list  # tensor names


# The image input types a graph from create_onnx.py / build_engine.py --save_onnx can have.
ONNX_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


class OnnxCpuRunner(Runner):
    """Runs a converted ONNX graph on the CPU, TensorRT NMS plugins included."""

    def __init__(self, onnx_path, threads=0, layout_optimizations=True):
        super().__init__()
        self.path = onnx_path
        self.threads = threads
        self.layout_optimizations = layout_optimizations
        self.name = f"onnxruntime-cpu:{os.path.basename(onnx_path)}"
        self.session = None
        self.plugin: Optional[PluginNode] = None
        self._tail = None  # ONNX Runtime session of the ops after the plugin (--clip_to_image), if any

    def activate_impl(self):
        import onnxruntime as ort

        model = load_detector_onnx(self.path)
        if any(value.name == WINDOW_INPUT for value in model.graph.input):
            self.window_input = WINDOW_INPUT
        self.input_mean = onnx_input_mean(model)
        self.metadata = onnx_metadata(model)
        model = self._cut_at_plugin(model)
        options = cpu_session_options(self.layout_optimizations)
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"{self.path}: ONNX Runtime cannot load this graph ({first})") from None
        images = [value for value in self.session.get_inputs() if value.name != WINDOW_INPUT]
        self._input = images[0] if images else self.session.get_inputs()[0]
        self._check_is_detector()

    def _check_is_detector(self):
        """One-line error for a valid ONNX that is not a detector graph from create_onnx.py (its outputs were
        checked on loading, by check_detector_graph): one image input, besides a --clip_to_image size."""
        inputs = [value for value in self._session().get_inputs() if value.name != WINDOW_INPUT]
        if len(inputs) != 1:
            raise UserError(f"{self.path}: not an EfficientDet detector graph from create_onnx.py ({len(inputs)} "
                            "inputs); convert the SavedModel with create_onnx.py")
        image_layout(tuple(d if isinstance(d, int) else None for d in self._input.shape), self.path)

    def _cut_at_plugin(self, model):
        from efficientdet_trt.convert.graph_surgery import gs

        graph = gs.import_onnx(model)
        plugins = [node for node in graph.nodes if node.op in PLUGIN_OPS]
        if not plugins:
            return model
        if len(plugins) > 1:
            raise UserError(f"{self.path}: more than one NMS plugin node; "
                            "not an EfficientDet graph from create_onnx.py")
        node = plugins[0]
        inputs = [tensor.values if isinstance(tensor, gs.Constant) else tensor.name for tensor in node.inputs]
        self.plugin = PluginNode(node.op, dict(node.attrs), inputs, [tensor.name for tensor in node.outputs])
        graph_outputs = [tensor for tensor in node.inputs if not isinstance(tensor, gs.Constant)]
        for tensor in graph_outputs:
            tensor.dtype = tensor.dtype or np.float32
        if not set(self.plugin.outputs) >= {value.name for value in model.graph.output}:  # ops after it: the window
            self._tail = self._after_plugin(model)
        node.outputs.clear()
        graph.nodes = [other for other in graph.nodes if other is not node]
        graph.outputs = graph_outputs
        graph.cleanup(remove_unused_graph_inputs=True).toposort()
        log.debug("running %s in NumPy after ONNX Runtime", node.op)
        return gs.export_onnx(graph)

    def _after_plugin(self, model):
        """An ONNX Runtime session of the ops after the plugin (its outputs and the image sizes in)."""
        import onnxruntime as ort

        from efficientdet_trt.convert.graph_surgery import gs

        graph = gs.import_onnx(model)
        node = next(node for node in graph.nodes if node.op in PLUGIN_OPS)
        tensors = graph.tensors()
        graph.inputs = list(node.outputs) + ([tensors[WINDOW_INPUT]] if WINDOW_INPUT in tensors else [])
        node.outputs.clear()
        graph.cleanup(remove_unused_graph_inputs=True).toposort()
        tail = gs.export_onnx(graph)
        return ort.InferenceSession(tail.SerializeToString(), cpu_session_options(),
                                    providers=["CPUExecutionProvider"])

    def deactivate_impl(self):
        self.session = None

    def _session(self):
        if self.session is None:
            raise RuntimeError("activate the runner first")
        return self.session

    def input_spec(self):
        self._session()
        dtype = ONNX_INPUT_TYPES.get(self._input.type, np.float32)
        shape = tuple(d if isinstance(d, int) else None for d in self._input.shape)
        return TensorSpec(self._input.name, shape, np.dtype(dtype))

    def infer(self, feed):
        return self.apply_plugin(self.infer_raw(feed), feed)

    def apply_plugin(self, values, feed=None):
        """The four outputs from what infer_raw returned (the NMS plugin run in NumPy, if the graph has one,
        and the ops after it, fed the image sizes from `feed`)."""
        if self.plugin is None:
            return values
        op, attrs, _, output_names = self.plugin
        arrays = self.plugin_inputs(values)
        if op == "EfficientNMS_TRT":
            anchors = arrays[2] if len(arrays) > 2 else None
            results = nms_reference.efficient_nms(arrays[0], arrays[1], anchors,
                                                  nms_reference.EfficientNMSParams.from_attrs(attrs))
        else:
            results = nms_reference.batched_nms(arrays[0], arrays[1], nms_reference.BatchedNMSParams.from_attrs(attrs))
        results = dict(zip(output_names, results))
        if self._tail is None:
            return results
        names = [value.name for value in self._tail.get_inputs()]
        tail_feed = {name: results[name] if name in results else (feed or {})[name] for name in names}
        final = [value.name for value in self._tail.get_outputs()]
        return dict(zip(final, self._tail.run(final, tail_feed)))

    def plugin_inputs(self, values):
        """The plugin node's input arrays, in order: computed ones from infer_raw's `values`, constants as stored."""
        if self.plugin is None:
            raise RuntimeError(f"{self.path} has no NMS plugin node")
        return [values[item] if isinstance(item, str) else item for item in self.plugin.inputs]

    def infer_raw(self, feed):
        """What ONNX Runtime computes: the outputs, or the plugin's inputs (pre-NMS heads) when cut."""
        session = self._session()
        names = [output.name for output in session.get_outputs()]
        wanted = {value.name for value in session.get_inputs()}
        return dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in wanted})))
