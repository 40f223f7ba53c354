"""`TensorRTRunner`: a TensorRT engine (8.6-11.x, through trt_adapter.py) behind the runner interface.

Its buffers, copies and CUDA graph are io_buffers.EngineBuffers (over cuda_memory.py); this module
makes the TensorRT calls. With GPU preprocessing (gpu_preprocess.py) the input is written on the GPU
(device_input / infer_device). The ONNX's metadata (class names, ...) is kept beside the engine
(engine_metadata_path).
"""

import logging
import os

from efficientdet_trt.core.common import UserError
from efficientdet_trt.engine import io_buffers, trt_adapter
from efficientdet_trt.run.runner import WINDOW_INPUT, Runner, TensorSpec, window_sizes

log = logging.getLogger("tensorrt_runner")


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
        from efficientdet_trt.engine import cuda_memory

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
        inputs = [t for t in self.tensors if t.is_input and t.name != WINDOW_INPUT]
        if len(inputs) != 1:
            raise UserError(f"{self.path}: expected one image input, found {len(inputs)}")
        self._input = inputs[0]
        self._inputs = [t for t in self.tensors if t.is_input]
        self.window_input = WINDOW_INPUT if len(self._inputs) > 1 else None
        name, shape = self._input.name, self._input.shape
        self.batch_range = (shape[0], shape[0])
        if shape[0] < 0:
            low, _, high = trt_adapter.profile_shapes(self.engine, name)
            self.batch_range = (low[0], high[0])
        self.buffers = io_buffers.EngineBuffers(self.cuda, self.tensors, self.context.set_tensor_address,
                                                self.use_cuda_graph)
        self.stream = self.buffers.stream
        self._device_batch = None

    def deactivate_impl(self):
        self.buffers.close()
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
        shape = self._input.shape
        low, high = self.batch_range
        if not low <= batch <= high:
            raise UserError(f"{self.path}: batch {batch} is outside the engine's batch range {low}..{high}")
        self.buffers.allocate(batch)
        if shape[0] < 0:
            for tensor in self._inputs:
                self.context.set_input_shape(tensor.name, (batch,) + tuple(tensor.shape[1:]))

    def device_input(self, count):
        """The device pointer of the input binding, ready for `count` images written there on `self.stream`
        (GPU preprocessing); rows a fixed-batch engine has beyond `count` are zeroed. Run with infer_device."""
        name, shape = self._input.name, self._input.shape
        batch = shape[0] if shape[0] >= 0 else count
        self._prepare(batch)
        self.buffers.zero_rows(name, count, batch)
        self._device_batch = batch
        return self.buffers.device[name]

    def infer_device(self, infos=None):
        """Run on the input device_input() handed out, already written on the GPU; outputs as infer()'s.
        A --clip_to_image engine gets its image sizes from `infos` (the batcher's) through the host."""
        if self.window_input:
            self.buffers.copy_in(self.window_input, window_sizes(self._device_batch, infos, self.input_hw))
        return self._run(self._device_batch)

    def infer(self, feed):
        batch = len(feed[self._input.name])
        self._prepare(batch)
        for tensor in self._inputs:
            self.buffers.copy_in(tensor.name, feed[tensor.name])
        return self._run(batch)

    def _run(self, batch):
        outputs = {t.name: trt_adapter.dims_tuple(self.context.get_tensor_shape(t.name))
                   for t in self.tensors if not t.is_input}
        results = self.buffers.run(batch, self._enqueue, outputs)
        self.last_gpu_ms = self.buffers.last_gpu_ms
        return results
