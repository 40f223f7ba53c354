"""GPU memory, streams and timers for the TensorRT runner, over whichever CUDA bindings are installed.

Two backends behind one small interface:
- cuda-python (`from cuda.bindings import runtime`), NVIDIA's maintained bindings,
  wheels only; what NVIDIA's samples use since TensorRT 10.14. Preferred.
- pycuda, the dependency this project was first specified with.

Nothing here runs without an NVIDIA driver; `device_count()` answers 0 then.
"""

import atexit
import ctypes
import logging

import numpy as np

from efficientdet_trt.core.common import UserError

log = logging.getLogger("cuda_memory")

INSTALL_HINT = "install NVIDIA's CUDA Python bindings: pip install cuda-python (or pycuda)"


class CudaBackend:
    """The interface both backends implement; CUDA graphs are optional."""

    name = "cuda"
    supports_graphs = False

    def begin_capture(self, stream):
        raise NotImplementedError(f"{self.name} cannot capture CUDA graphs")

    def end_capture(self, stream):
        raise NotImplementedError(f"{self.name} cannot capture CUDA graphs")

    def launch_graph(self, graph_exec, stream):
        raise NotImplementedError(f"{self.name} cannot capture CUDA graphs")


class CudaPython(CudaBackend):
    """cuda-python runtime API (cuda.bindings.runtime)."""

    name = "cuda-python"

    def __init__(self):
        from cuda.bindings import runtime  # pyright: ignore[reportAttributeAccessIssue]  (compiled, no stubs)

        self.rt = runtime
        self._pinned = {}

    def _check(self, result, what):
        error = result[0]
        if error != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {what} failed: {error}")
        return result[1] if len(result) == 2 else result[1:]

    def device_count(self):
        error, count = self.rt.cudaGetDeviceCount()
        return count if error == self.rt.cudaError_t.cudaSuccess else 0

    def device_name(self):
        props = self._check(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)

    def malloc(self, nbytes):
        return int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, pointer):
        self.rt.cudaFree(pointer)

    def pinned_empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        pointer = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))
        array = raw[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
        self._pinned[id(array)] = pointer
        return array

    def free_pinned(self, array):
        pointer = self._pinned.pop(id(array), None)
        if pointer is not None:
            self.rt.cudaFreeHost(pointer)

    def create_stream(self):
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream):
        return int(stream)

    def destroy_stream(self, stream):
        self.rt.cudaStreamDestroy(stream)

    def copy_to_device(self, pointer, array, stream):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check((self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream)[0], None),
                    "cudaMemcpyAsync")

    def copy_to_host(self, array, pointer, stream):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check((self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream)[0], None),
                    "cudaMemcpyAsync")

    def synchronize(self, stream):
        self._check((self.rt.cudaStreamSynchronize(stream)[0], None), "cudaStreamSynchronize")

    def memset(self, pointer, nbytes, stream):
        self._check((self.rt.cudaMemsetAsync(pointer, 0, nbytes, stream)[0], None), "cudaMemsetAsync")

    def create_event(self):
        return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record_event(self, event, stream):
        self.rt.cudaEventRecord(event, stream)

    def elapsed_ms(self, start, end):
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    # CUDA graphs: capture one enqueue, replay it.
    supports_graphs = True

    def begin_capture(self, stream):
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check((self.rt.cudaStreamBeginCapture(stream, mode)[0], None), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch_graph(self, graph_exec, stream):
        self._check((self.rt.cudaGraphLaunch(graph_exec, stream)[0], None), "cudaGraphLaunch")


class PyCuda(CudaBackend):
    """pycuda driver API, on the device's primary context (shared with TensorRT's runtime API)."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as driver  # pyright: ignore[reportMissingImports]  (sdist-only, not installed here)

        self.driver = driver
        self.context = None
        self._allocations = {}

    def device_count(self):
        try:
            self.driver.init()
            return self.driver.Device.count()
        except self.driver.Error:
            return 0

    def _ensure_context(self):
        if self.context is None:
            self.context = self.driver.Device(0).retain_primary_context()
            self.context.push()
            # pycuda aborts the process at exit if a context is still on its stack
            atexit.register(self._release_context)

    def _release_context(self):
        if self.context is not None:
            self._allocations.clear()  # their memory goes with the context
            self.context.pop()
            self.context.detach()
            self.context = None

    def device_name(self):
        return self.driver.Device(0).name()

    def malloc(self, nbytes):
        self._ensure_context()
        allocation = self.driver.mem_alloc(max(1, nbytes))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer):
        allocation = self._allocations.pop(pointer, None)
        if allocation is not None:
            allocation.free()

    def pinned_empty(self, shape, dtype):
        self._ensure_context()
        return self.driver.pagelocked_empty(shape, dtype)

    def free_pinned(self, array):
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def create_stream(self):
        self._ensure_context()
        return self.driver.Stream()

    def stream_handle(self, stream):
        return stream.handle

    def destroy_stream(self, stream):
        pass

    def copy_to_device(self, pointer, array, stream):
        self.driver.memcpy_htod_async(pointer, array, stream)

    def copy_to_host(self, array, pointer, stream):
        self.driver.memcpy_dtoh_async(array, pointer, stream)

    def synchronize(self, stream):
        stream.synchronize()

    def memset(self, pointer, nbytes, stream):
        self.driver.memset_d8_async(pointer, 0, nbytes, stream)

    def create_event(self):
        return self.driver.Event()

    def record_event(self, event, stream):
        event.record(stream)

    def elapsed_ms(self, start, end):
        return float(end.time_since(start))


def load_cuda():
    """The first CUDA backend that imports (cuda-python, then pycuda)."""
    errors = []
    for backend in (CudaPython, PyCuda):
        try:
            return backend()
        except ImportError as error:
            errors.append(f"{backend.name}: {error}")
    raise UserError(f"no CUDA Python bindings found ({'; '.join(errors)}); {INSTALL_HINT}")


def require_gpu(cuda):
    """Fail clearly before TensorRT is touched when there is no usable CUDA device."""
    count = cuda.device_count()
    if count < 1:
        raise UserError("no CUDA device found (no NVIDIA GPU or driver on this machine); TensorRT engines need "
                        "one. To check the model on the CPU instead, run the ONNX with --onnx")
    log.info("CUDA device: %s (%s)", cuda.device_name(), cuda.name)
    return count
