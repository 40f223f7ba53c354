"""Runners: one small interface over every way this project executes a detector.

In the spirit of Polygraphy's backends, a runner is made from a model path,
is activated (loads, allocates), answers `input_spec()` and `infer(feed)`, and
is deactivated. Callers (infer.py, eval_coco.py, tests) do not care which one
they hold:

- `OnnxCpuRunner` runs the converted ONNX in ONNX Runtime on the CPU. TensorRT
  plugin nodes (EfficientNMS_TRT, BatchedNMS_TRT) are run by the NumPy
  references in nms_reference.py: the graph is cut at the plugin's inputs,
  ONNX Runtime computes them, and the reference finishes the job.
- `TensorRTRunner` runs an engine through trt_adapter.py (TensorRT 8.6-11.x) with
  buffers from cuda_memory.py; with GPU preprocessing (gpu_preprocess.py) its
  input is written on the GPU (device_input / infer_device).
- `TFSavedModelRunner` runs the SavedModel itself in TensorFlow (compare_tf.py,
  tests).
"""

import logging
import os
from dataclasses import dataclass

import numpy as np

import nms_reference
import trt_adapter
from common import UserError
from graph_surgery import OUTPUT_NAMES, WINDOW_INPUT  # the graph's I/O names, made there

log = logging.getLogger("runners")

PLUGIN_OPS = ("EfficientNMS_TRT", "BatchedNMS_TRT")


def window_sizes(batch, infos, input_hw):
    """The `image_size` rows [batch, 2] float32 of a --clip_to_image graph: each image's fitted (height, width)
    in model pixels from its ImageInfo; the whole input for rows without one (padding rows, benchmarks)."""
    sizes = np.tile(np.asarray(input_hw, np.float32), (batch, 1))
    for row, info in enumerate(infos or []):
        sizes[row] = info.fitted_hw()
    return sizes


def image_layout(shape, name):
    """('NCHW' or 'NHWC', (height, width)) of an image input's shape (channel dimension of size 3)."""
    if len(shape) != 4:
        raise UserError(f"{name}: the input has shape {shape}, not a batch of images (4 dimensions); give a model "
                        "converted with create_onnx.py")
    if shape[1] == 3 and shape[3] != 3:
        return "NCHW", (shape[2], shape[3])
    if shape[3] == 3:
        return "NHWC", (shape[1], shape[2])
    raise UserError(f"{name}: cannot tell the input layout from shape {shape}")


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


@dataclass
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings/None for dynamic dimensions
    dtype: np.dtype


class Runner:
    """Base class: activate/deactivate (or `with`), input_spec(), feed(batch, infos), infer(feed) -> {name: array}."""

    name = "runner"
    input_mean = None  # RGB mean (0-255) the model normalises with, when the runner can tell
    window_input = None  # WINDOW_INPUT when the model has it (create_onnx.py --clip_to_image)

    def __init__(self):
        self.is_active = False
        self.metadata = {}  # what create_onnx.py recorded about the model (num_classes, class_names, ...)

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

    def feed(self, batch, infos=None):
        """infer()'s input for a batch of images: the image input and, for a --clip_to_image model, the
        image sizes from the batcher's `infos` (the whole input for rows without one)."""
        feed = {self.input_spec().name: batch}
        if self.window_input:
            feed[self.window_input] = window_sizes(len(batch), infos, self.input_hw)
        return feed

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
        return image_layout(self.input_spec().shape, self.name)[0]

    @property
    def input_hw(self):
        return image_layout(self.input_spec().shape, self.name)[1]

    @property
    def fixed_batch(self):
        """The static batch size, or None when the batch is dynamic."""
        batch = self.input_spec().shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None


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
        self.plugin = None  # (op, attrs, [input names or constants], output names)
        self._tail = None  # ONNX Runtime session of the ops after the plugin (--clip_to_image), if any
        self._final_outputs = []

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
        """One-line error for a valid ONNX that is not a detector graph from create_onnx.py."""
        session = self._session()
        inputs = [value for value in session.get_inputs() if value.name != WINDOW_INPUT]
        outputs = set(self._final_outputs)
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if len(inputs) != 1 or missing:
            found = f"{len(inputs)} inputs" if len(inputs) != 1 else f"no output {missing[0]}"
            raise UserError(f"{self.path}: not an EfficientDet detector graph from create_onnx.py ({found}); "
                            "convert the SavedModel with create_onnx.py")
        image_layout(tuple(d if isinstance(d, int) else None for d in self._input.shape), self.path)

    def _cut_at_plugin(self, model):
        from graph_surgery import gs

        graph = gs.import_onnx(model)
        self._final_outputs = [value.name for value in model.graph.output]
        plugins = [node for node in graph.nodes if node.op in PLUGIN_OPS]
        if not plugins:
            return model
        if len(plugins) > 1:
            raise UserError(f"{self.path}: more than one NMS plugin node; "
                            "not an EfficientDet graph from create_onnx.py")
        node = plugins[0]
        inputs = [tensor.values if isinstance(tensor, gs.Constant) else tensor.name for tensor in node.inputs]
        self.plugin = (node.op, dict(node.attrs), inputs, [tensor.name for tensor in node.outputs])
        graph_outputs = [tensor for tensor in node.inputs if not isinstance(tensor, gs.Constant)]
        for tensor in graph_outputs:
            tensor.dtype = tensor.dtype or np.float32
        if not set(self.plugin[3]) >= set(self._final_outputs):  # ops after the plugin: the image window
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

        from graph_surgery import gs

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
        return [values[item] if isinstance(item, str) else item for item in self.plugin[2]]

    def infer_raw(self, feed):
        """What ONNX Runtime computes: the outputs, or the plugin's inputs (pre-NMS heads) when cut."""
        session = self._session()
        names = [output.name for output in session.get_outputs()]
        wanted = {value.name for value in session.get_inputs()}
        return dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in wanted})))


def engine_metadata_path(engine_path):
    """Where build_engine.py keeps the ONNX's metadata (class names, ...) beside an engine."""
    return engine_path + ".metadata.json"


def read_engine_metadata(engine_path):
    import json

    path = engine_metadata_path(engine_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable (%s); the engine's class names are not known", path, error)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class TensorRTRunner(Runner):
    """Runs a TensorRT engine (TensorRT 8.6-11.x) with page-locked buffers on one CUDA stream.

    Dynamic-batch engines run at the batch given (within the profile), never
    padded to the profile's maximum. With use_cuda_graph, fixed-shape runs are
    captured once into a CUDA graph and replayed (cuda-python backend only).
    """

    def __init__(self, engine_path, use_cuda_graph=False, verbose=False):
        super().__init__()
        self.path = engine_path
        self.use_cuda_graph = use_cuda_graph
        self.verbose = verbose
        self.name = f"tensorrt:{os.path.basename(engine_path)}"
        self.last_gpu_ms = None

    def activate_impl(self):
        import cuda_memory

        trt_adapter.check_engine_file(self.path)
        try:
            trt = trt_adapter.import_tensorrt()
        except UserError as error:
            raise UserError(f"{self.path}: {error}. To check the model on the CPU instead, run its ONNX with "
                            "--onnx") from None
        self.cuda = cuda_memory.load_cuda()
        cuda_memory.require_gpu(self.cuda)  # before any TensorRT object: TensorRT without a GPU can crash
        self.metadata = read_engine_metadata(self.path)
        self.logger = trt_adapter.make_logger(self.verbose)
        trt_adapter.init_plugins(self.logger)
        self.runtime = trt.Runtime(self.logger)
        self.engine = trt_adapter.load_engine(self.runtime, self.logger, self.path)
        self.context = self.engine.create_execution_context()
        self.tensors = trt_adapter.io_tensors(self.engine)
        inputs = [t for t in self.tensors if t[1] and t[0] != WINDOW_INPUT]
        if len(inputs) != 1:
            raise UserError(f"{self.path}: expected one image input, found {len(inputs)}")
        self._input = inputs[0]
        self._inputs = [t for t in self.tensors if t[1]]
        self.window_input = WINDOW_INPUT if len(self._inputs) > 1 else None
        name, _, _, shape = self._input
        self.batch_range = (shape[0], shape[0])
        if shape[0] < 0:
            low, _, high = trt_adapter.profile_shapes(self.engine, name)
            self.batch_range = (low[0], high[0])
        self.stream = self.cuda.create_stream()
        self.events = (self.cuda.create_event(), self.cuda.create_event())
        self.device = {}
        self.host = {}
        self._allocated_batch = None
        self._graph = None
        self._graph_batch = None
        self._device_batch = None

    def _allocate(self, batch):
        """Device and pinned host buffers for `batch` images (reallocated only when it grows)."""
        if self._allocated_batch is not None and batch <= self._allocated_batch:
            return
        self._free_buffers()
        for name, _, dtype, shape in self.tensors:
            full = tuple(batch if (i == 0 and d < 0) else d for i, d in enumerate(shape))
            self.host[name] = self.cuda.pinned_empty(full, dtype)
            self.device[name] = self.cuda.malloc(self.host[name].nbytes)
            self.context.set_tensor_address(name, self.device[name])
        self._allocated_batch = batch
        self._graph = None

    def _free_buffers(self):
        for name, pointer in self.device.items():
            self.cuda.free(pointer)
            self.cuda.free_pinned(self.host[name])
        self.device, self.host = {}, {}

    def deactivate_impl(self):
        self._free_buffers()
        self.cuda.destroy_stream(self.stream)
        del self.context, self.engine, self.runtime

    def input_spec(self):
        name, _, dtype, shape = self._input
        return TensorSpec(name, tuple(d if d >= 0 else None for d in shape), dtype)

    def _enqueue(self):
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            said = " ".join(self.logger.messages[-3:])
            raise RuntimeError(f"TensorRT execution failed: {said}")

    def _prepare(self, batch):
        """Buffers and input shape for a run of `batch` images."""
        name, _, _, shape = self._input
        low, high = self.batch_range
        if not low <= batch <= high:
            raise UserError(f"{self.path}: batch {batch} is outside the engine's batch range {low}..{high}")
        self._allocate(batch)
        if shape[0] < 0:
            for input_name, _, _, input_shape in self._inputs:
                self.context.set_input_shape(input_name, (batch,) + tuple(input_shape[1:]))

    def device_input(self, count):
        """The device pointer of the input binding, ready for `count` images written there on `self.stream`
        (GPU preprocessing); rows a fixed-batch engine has beyond `count` are zeroed. Run with infer_device."""
        name, _, dtype, shape = self._input
        batch = shape[0] if shape[0] >= 0 else count
        self._prepare(batch)
        if batch > count:
            row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
            self.cuda.memset(self.device[name] + count * row, (batch - count) * row, self.stream)
        self._device_batch = batch
        return self.device[name]

    def infer_device(self, infos=None):
        """Run on the input device_input() handed out, already written on the GPU; outputs as infer()'s.
        A --clip_to_image engine gets its image sizes from `infos` (the batcher's) through the host."""
        if self.window_input:
            self._copy_in(self.window_input, window_sizes(self._device_batch, infos, self.input_hw))
        return self._run(self._device_batch)

    def _copy_in(self, name, array):
        dtype = next(t[2] for t in self._inputs if t[0] == name)
        array = np.ascontiguousarray(array, dtype=dtype)
        host = self.host[name].reshape(-1)[: array.size].reshape(array.shape)
        host[...] = array
        self.cuda.copy_to_device(self.device[name], host, self.stream)

    def infer(self, feed):
        name = self._input[0]
        batch = len(feed[name])
        self._prepare(batch)
        for input_name, _, _, _ in self._inputs:
            self._copy_in(input_name, feed[input_name])
        return self._run(batch)

    def _run(self, batch):
        outputs = [(n, trt_adapter.dims_tuple(self.context.get_tensor_shape(n)))
                   for n, is_input, _, _ in self.tensors if not is_input]
        start, end = self.events
        self.cuda.record_event(start, self.stream)
        if self.use_cuda_graph and self.cuda.supports_graphs:
            if self._graph is None or self._graph_batch != batch:
                self._enqueue()  # TensorRT wants one plain enqueue after a shape change before capture
                self.cuda.begin_capture(self.stream)
                self._enqueue()
                self._graph = self.cuda.end_capture(self.stream)
                self._graph_batch = batch
            self.cuda.launch_graph(self._graph, self.stream)
        else:
            self._enqueue()
        self.cuda.record_event(end, self.stream)
        results = {}
        for out_name, out_shape in outputs:
            host = self.host[out_name].reshape(-1)[: int(np.prod(out_shape))].reshape(out_shape)
            self.cuda.copy_to_host(host, self.device[out_name], self.stream)
            results[out_name] = host
        self.cuda.synchronize(self.stream)
        self.last_gpu_ms = self.cuda.elapsed_ms(start, end)
        return {k: v.copy() for k, v in results.items()}


class TFSavedModelRunner(Runner):
    """An EfficientDet SavedModel (AutoML or TFOD) run by TensorFlow, with the same four outputs (parity checks).

    `infer` is fed the model-size canvases ImageBatcher makes (as uint8), so
    TF's own resize is the identity and both sides see the same pixels; boxes
    come back as (ymin, xmin, ymax, xmax) in those pixels and classes 0-based.
    `run_image` takes an image of any size, which TF resizes and pads itself.
    AutoML exports answer `detections:0` rows in pixels; TFOD exports
    (exporter_lib_v2) answer `detection_boxes` normalised to the image and
    `detection_classes` as label-map ids (class + 1), turned into the same rows.
    """

    def __init__(self, saved_model, input_hw, max_detections=100):
        super().__init__()
        self.path = saved_model
        self.hw = tuple(input_hw)
        self.max_detections = max_detections
        self.name = f"tensorflow:{os.path.basename(os.path.normpath(saved_model))}"

    def activate_impl(self):
        import tensorflow as tf

        import tf_to_onnx

        tf_to_onnx.check_saved_model_path(self.path)
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        with self.session.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], self.path)
        signature = meta.signature_def["serving_default"]
        self.input_name = next(iter(signature.inputs.values())).name
        self.outputs = {key: value.name for key, value in signature.outputs.items()}
        self.output_name = next(iter(self.outputs.values()))
        self.is_tfod = "detection_boxes" in self.outputs and "raw_detection_scores" in self.outputs
        if not self.is_tfod and self.output_name != "detections:0":
            raise UserError(f"{self.path}: not an AutoML (output detections:0) or TF2 Object Detection API "
                            "(detection_boxes, ...) EfficientDet SavedModel")

    def deactivate_impl(self):
        self.session.close()

    def input_spec(self):
        return TensorSpec("input", (None, self.hw[0], self.hw[1], 3), np.dtype(np.float32))

    def run_image(self, image, tensor_names=()):
        """One uint8 [h, w, 3] image of any size (TensorFlow resizes and pads it itself).

        Returns (detection rows [K, 7] as AutoML writes them, boxes in the
        image's pixels, padding rows removed; values of `tensor_names`).
        """
        if self.is_tfod:
            return self._run_tfod(image, tensor_names)
        values = self.session.run([self.output_name, *tensor_names], {self.input_name: image[None]})
        rows = values[0][0]
        return rows[rows[:, 5] > 0][: self.max_detections], values[1:]

    def _run_tfod(self, image, tensor_names):
        keys = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
        values = self.session.run([self.outputs[k] for k in keys] + list(tensor_names),
                                  {self.input_name: image[None]})
        count = int(values[0][0])
        height, width = image.shape[:2]
        boxes = values[1][0, :count] * np.array([height, width, height, width], np.float32)
        rows = np.concatenate([np.zeros((count, 1), np.float32), boxes, values[2][0, :count, None],
                               values[3][0, :count, None]], axis=1)
        return rows[rows[:, 5] > 0][: self.max_detections], values[4:]

    def raw_heads(self, image):
        """TFOD only: what its post-processing consumes, for one image: decoded boxes [A, 4] (ymin, xmin,
        ymax, xmax) in pixels of the model-size canvas TF fitted the image into, and scores [A, C] after
        the score converter (sigmoid)."""
        boxes, scores = self.session.run([self.outputs["raw_detection_boxes"], self.outputs["raw_detection_scores"]],
                                         {self.input_name: image[None]})
        height, width = self.hw
        return boxes[0] * np.array([height, width, height, width], np.float32), scores[0]

    def as_outputs(self, detection_rows):
        """The four detection outputs of a batch from each image's AutoML detection rows (classes 0-based)."""
        batch, limit = len(detection_rows), self.max_detections
        outputs = {"num_detections": np.zeros((batch, 1), np.int32),
                   "detection_boxes": np.zeros((batch, limit, 4), np.float32),
                   "detection_scores": np.zeros((batch, limit), np.float32),
                   "detection_classes": np.zeros((batch, limit), np.int32)}
        for row, rows in enumerate(detection_rows):
            count = len(rows)
            outputs["num_detections"][row, 0] = count
            outputs["detection_boxes"][row, :count] = rows[:, 1:5]
            outputs["detection_scores"][row, :count] = rows[:, 5]
            outputs["detection_classes"][row, :count] = rows[:, 6].astype(np.int32) - 1
        return outputs

    def infer(self, feed):
        images = np.clip(np.rint(next(iter(feed.values()))), 0, 255).astype(np.uint8)
        return self.as_outputs([self.run_image(image)[0] for image in images])
