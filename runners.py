"""Runners: one small interface over every way this project executes a detector.

In the spirit of Polygraphy's backends, a runner is made from a model path,
is activated (loads, allocates), answers `input_spec()` and `infer(feed)`, and
is deactivated. Callers (infer.py, eval_coco.py, tests) do not care which one
they hold:

- `OnnxCpuRunner` runs the converted ONNX in ONNX Runtime on the CPU. TensorRT
  plugin nodes (EfficientNMS_TRT, BatchedNMS_TRT) are run by the NumPy
  references in nms_reference.py: the graph is cut at the plugin's inputs,
  ONNX Runtime computes them, and the reference finishes the job.
- The TensorRT runner (trt_runtime.py) has the same interface.
"""

import logging
import os
from dataclasses import dataclass

import numpy as np

import nms_reference
from common import UserError

log = logging.getLogger("runners")

OUTPUT_NAMES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
PLUGIN_OPS = ("EfficientNMS_TRT", "BatchedNMS_TRT")


@dataclass
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings/None for dynamic dimensions
    dtype: np.dtype


class Runner:
    """Base class: activate/deactivate (or `with`), input_spec(), infer(feed) -> {name: array}."""

    name = "runner"

    def __init__(self):
        self.is_active = False

    def activate(self):
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self):
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    def activate_impl(self):
        raise NotImplementedError

    def deactivate_impl(self):
        pass

    def input_spec(self):
        """The single image input as a TensorSpec."""
        raise NotImplementedError

    def infer(self, feed):
        """Run one batch: feed maps input name -> array; returns the four detection outputs."""
        raise NotImplementedError

    @property
    def input_layout(self):
        """'NCHW' or 'NHWC', from the input's declared shape (channel dimension of size 3)."""
        shape = self.input_spec().shape
        if shape[1] == 3 and shape[3] != 3:
            return "NCHW"
        if shape[3] == 3:
            return "NHWC"
        raise UserError(f"{self.name}: cannot tell the input layout from shape {shape}")

    @property
    def input_hw(self):
        shape = self.input_spec().shape
        return (shape[2], shape[3]) if self.input_layout == "NCHW" else (shape[1], shape[2])

    @property
    def fixed_batch(self):
        """The static batch size, or None when the batch is dynamic."""
        batch = self.input_spec().shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None


class OnnxCpuRunner(Runner):
    """Runs a converted ONNX graph on the CPU, TensorRT NMS plugins included."""

    def __init__(self, onnx_path, threads=0):
        super().__init__()
        self.path = onnx_path
        self.threads = threads
        self.name = f"onnxruntime-cpu:{os.path.basename(onnx_path)}"
        self.session = None
        self.plugin = None  # (op, attrs, [input names or constants], output names)

    def activate_impl(self):
        import onnx
        import onnxruntime as ort

        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: no such ONNX file; create it with create_onnx.py")
        try:
            model = onnx.load(self.path)
        except Exception as error:
            raise UserError(f"{self.path}: not a readable ONNX model ({type(error).__name__}); "
                            "re-create it with create_onnx.py") from None
        model = self._cut_at_plugin(model)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"{self.path}: ONNX Runtime cannot load this graph ({first})") from None
        self._input = self.session.get_inputs()[0]

    def _cut_at_plugin(self, model):
        import onnx_graphsurgeon as gs

        graph = gs.import_onnx(model)
        plugins = [node for node in graph.nodes if node.op in PLUGIN_OPS]
        if not plugins:
            return model
        if len(plugins) > 1:
            raise UserError(f"{self.path}: more than one NMS plugin node; not an EfficientDet graph from create_onnx.py")
        node = plugins[0]
        inputs = [tensor.values if isinstance(tensor, gs.Constant) else tensor.name for tensor in node.inputs]
        self.plugin = (node.op, dict(node.attrs), inputs, [tensor.name for tensor in node.outputs])
        graph_outputs = [tensor for tensor in node.inputs if not isinstance(tensor, gs.Constant)]
        for tensor in graph_outputs:
            tensor.dtype = tensor.dtype or np.float32
        node.outputs.clear()
        graph.nodes.remove(node)
        graph.outputs = graph_outputs
        graph.cleanup().toposort()
        log.debug("running %s in NumPy after ONNX Runtime", node.op)
        return gs.export_onnx(graph)

    def deactivate_impl(self):
        self.session = None

    def input_spec(self):
        if self.session is None:
            raise RuntimeError("activate the runner first")
        dtype = np.float16 if self._input.type == "tensor(float16)" else np.float32
        shape = tuple(d if isinstance(d, int) else None for d in self._input.shape)
        return TensorSpec(self._input.name, shape, np.dtype(dtype))

    def infer(self, feed):
        if self.session is None:
            raise RuntimeError("activate the runner first")
        names = [output.name for output in self.session.get_outputs()]
        values = dict(zip(names, self.session.run(names, feed)))
        if self.plugin is None:
            return values
        op, attrs, inputs, output_names = self.plugin
        arrays = [values[item] if isinstance(item, str) else item for item in inputs]
        if op == "EfficientNMS_TRT":
            anchors = arrays[2] if len(arrays) > 2 else None
            results = nms_reference.efficient_nms(arrays[0], arrays[1], anchors,
                                                  nms_reference.EfficientNMSParams.from_attrs(attrs))
        else:
            results = nms_reference.batched_nms(arrays[0], arrays[1], nms_reference.BatchedNMSParams.from_attrs(attrs))
        return dict(zip(output_names, results))

    def infer_raw(self, feed):
        """The plugin's input tensors (pre-NMS heads) as ONNX Runtime computes them."""
        names = [output.name for output in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))
