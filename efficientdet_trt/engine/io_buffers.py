"""An engine's inputs and outputs on one CUDA stream: pinned host and device buffers per I/O tensor, the
copies in and out around a run, its GPU time, and CUDA-graph capture and replay of the run.

Nothing here calls TensorRT: tensorrt_runner.py hands over the engine's tensors (trt_adapter.IOTensor),
how to bind a device buffer to a tensor and how to enqueue the engine. So tests/test_gpu.py runs all of
this on a GPU without TensorRT, with a plain device-to-device copy enqueued where the engine would be.
"""

import numpy as np


class EngineBuffers:
    """Buffers for `tensors` (IOTensor: name, is_input, dtype, shape with -1 for a dynamic batch) on `cuda`
    (a cuda_memory backend), each device buffer given to the engine by `bind(name, pointer)` when allocated."""

    def __init__(self, cuda, tensors, bind, use_cuda_graph=False):
        self.cuda = cuda
        self.tensors = list(tensors)
        self.bind = bind
        self.use_cuda_graph = use_cuda_graph and cuda.supports_graphs
        self.stream = cuda.create_stream()
        self.events = (cuda.create_event(), cuda.create_event())
        self.device = {}
        self.host = {}
        self.allocated_batch = None
        self.last_gpu_ms = None
        self._graph = None
        self._graph_batch = None

    def allocate(self, batch):
        """Device and pinned host buffers for `batch` images (reallocated, and bound again, only when it
        grows; a captured graph is dropped then, since it holds the old addresses)."""
        if self.allocated_batch is not None and batch <= self.allocated_batch:
            return
        self.free()
        for tensor in self.tensors:
            full = tuple(batch if (i == 0 and d < 0) else d for i, d in enumerate(tensor.shape))
            self.host[tensor.name] = self.cuda.pinned_empty(full, tensor.dtype)
            self.device[tensor.name] = self.cuda.malloc(self.host[tensor.name].nbytes)
            self.bind(tensor.name, self.device[tensor.name])
        self.allocated_batch = batch
        self._graph = None

    def free(self):
        for name, pointer in self.device.items():
            self.cuda.free(pointer)
            self.cuda.free_pinned(self.host[name])
        self.device, self.host = {}, {}
        self.allocated_batch = None

    def close(self):
        self.free()
        self.cuda.destroy_stream(self.stream)

    def _tensor(self, name):
        return next(t for t in self.tensors if t.name == name)

    def zero_rows(self, name, start, stop):
        """Zero rows start..stop (images) of `name`'s device buffer, on the stream."""
        tensor = self._tensor(name)
        row = int(np.prod(tensor.shape[1:])) * np.dtype(tensor.dtype).itemsize
        if stop > start:
            self.cuda.memset(self.device[name] + start * row, (stop - start) * row, self.stream)

    def copy_in(self, name, array):
        """`array` (cast to the tensor's dtype) through its pinned buffer to the front of its device buffer."""
        array = np.ascontiguousarray(array, dtype=self._tensor(name).dtype)
        host = self.host[name].reshape(-1)[: array.size].reshape(array.shape)
        host[...] = array
        self.cuda.copy_to_device(self.device[name], host, self.stream)

    def run(self, batch, enqueue, output_shapes):
        """enqueue() on the stream (captured into a CUDA graph the first time for this batch and replayed
        after, with use_cuda_graph), then each output of `output_shapes` ({name: shape of this run}) back to
        the host. Returns {name: array}, owned by the caller; last_gpu_ms is the run's GPU time."""
        start, end = self.events
        self.cuda.record_event(start, self.stream)
        if self.use_cuda_graph:
            if self._graph is None or self._graph_batch != batch:
                enqueue()  # TensorRT wants one plain enqueue after a shape change before a capture
                self.cuda.begin_capture(self.stream)
                enqueue()
                self._graph = self.cuda.end_capture(self.stream)
                self._graph_batch = batch
            self.cuda.launch_graph(self._graph, self.stream)
        else:
            enqueue()
        self.cuda.record_event(end, self.stream)
        results = {}
        for name, shape in output_shapes.items():
            host = self.host[name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            self.cuda.copy_to_host(host, self.device[name], self.stream)
            results[name] = host
        self.cuda.synchronize(self.stream)
        self.last_gpu_ms = self.cuda.elapsed_ms(start, end)
        return {name: array.copy() for name, array in results.items()}
