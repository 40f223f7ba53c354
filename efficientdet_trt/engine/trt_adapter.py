"""Every TensorRT-version difference this project meets, in one place (TensorRT 8.6, 10.x, 11.x).

Scripts call these helpers and never branch on the TensorRT version
themselves. Runtime facts used here (NVIDIA's Python API reference and the
8.x->10.x and 10.x->11.x migration guides):

- I/O goes through the named-tensor API, present from 8.5 and the only one
  from 10.0: num_io_tensors, get_tensor_name/mode/dtype/shape,
  get_tensor_profile_shape, context.set_input_shape, set_tensor_address,
  execute_async_v3.
- Plugins (EfficientNMS_TRT) are registered by trt.init_libnvinfer_plugins,
  which the lean runtime package does not have.
"""

import logging
import os
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from efficientdet_trt.core.common import UserError

if TYPE_CHECKING:  # the static checks resolve these against TensorRT's stubs
    import tensorrt

log = logging.getLogger("trt_adapter")

TRT_INSTALL_HINT = ("install TensorRT for your CUDA version (pip install tensorrt, or NVIDIA's packages); "
                    "this project supports TensorRT 8.6, 10.x and 11.x")


def import_tensorrt():
    """The tensorrt module; a one-line error when it is not installed.

    Helpers here and in builder.py call this instead of taking the module
    as a parameter, so pyright checks every TensorRT call against the stubs.
    """
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(f"TensorRT is not installed; {TRT_INSTALL_HINT}") from None
    return trt


def make_logger(verbose=False):
    """A TensorRT logger that also keeps its messages, so errors can quote TensorRT."""
    trt = import_tensorrt()

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []
            self.min_severity = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING

        def log(self, severity, msg):
            self.messages.append(str(msg))
            if severity <= self.min_severity:
                level = logging.ERROR if severity <= trt.ILogger.Severity.ERROR else (
                    logging.WARNING if severity == trt.ILogger.Severity.WARNING else logging.DEBUG)
                log.log(level, "TensorRT: %s", msg)

    return CapturingLogger()


def init_plugins(logger):
    """Register TensorRT's bundled plugins (EfficientNMS_TRT, BatchedNMS_TRT)."""
    trt = import_tensorrt()
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is None:
        log.warning("this TensorRT Python package has no plugin library (lean runtime?): EfficientNMS_TRT "
                    "will not be found; install the full tensorrt package")
        return False
    return bool(init(logger, ""))


def check_engine_file(path):
    """Cheap checks of an engine path before any CUDA or TensorRT work."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; give the engine file build_engine.py wrote")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such engine file; build one with build_engine.py")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        raise UserError(f"{path}: the engine file is empty; rebuild it with build_engine.py")
    if path.lower().endswith(".onnx") or (head[:1] == b"\x08" and b"onnx" in head.lower()):
        raise UserError(f"{path}: this is an ONNX model, not a TensorRT engine; run it with --onnx, or build an "
                        "engine from it with build_engine.py")


def load_engine(runtime: "tensorrt.Runtime", logger, path) -> "tensorrt.ICudaEngine":
    """Deserialize an engine file, turning TensorRT's failures into one-line errors."""
    trt = import_tensorrt()
    check_engine_file(path)
    with open(path, "rb") as handle:
        data = handle.read()
    logger.messages.clear()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        said = " ".join(m for m in logger.messages if m).strip() or "no reason given"
        hint = "rebuild it with build_engine.py on this machine"
        if "plugin" in said.lower() or "creator" in said.lower():
            hint = "the engine needs TensorRT's plugin library (libnvinfer_plugin) of the version it was built with"
        elif "version" in said.lower() or "serializ" in said.lower() or "magic" in said.lower():
            hint = (f"it was built by another TensorRT version or is not an engine; this is TensorRT "
                    f"{trt.__version__}: {hint}")
        raise UserError(f"{path}: TensorRT {trt.__version__} cannot load this engine ({said[:300]}); {hint}")
    return engine


def dims_tuple(dims: "tensorrt.Dims"):
    """A TensorRT Dims as a tuple of ints (Dims is tuple-like at run time; the stubs say indexable)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class IOTensor(NamedTuple):
    """One input or output of an engine."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple  # -1 for dynamic dims


def io_tensors(engine: "tensorrt.ICudaEngine") -> "list[IOTensor]":
    """The engine's inputs and outputs, in engine order."""
    trt = import_tensorrt()
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        shape = dims_tuple(engine.get_tensor_shape(name))
        tensors.append(IOTensor(name, is_input, dtype, shape))
    return tensors


def profile_shapes(engine: "tensorrt.ICudaEngine", name, profile=0):
    """(min, opt, max) shapes of an input in an optimization profile."""
    low, opt, high = engine.get_tensor_profile_shape(name, profile)
    return dims_tuple(low), dims_tuple(opt), dims_tuple(high)


def check_input_dtype(dtype, path):
    """A uint8 image input needs TensorRT 8.5 or later.

    NVIDIA's ONNX parser reads UINT8 network inputs from 8.5 (onnx-tensorrt's
    8.5 GA changelog), as network I/O only, cast to float by the first layer;
    8.6, 10.x and 11.x all take it (create_onnx's Cast right after the input).
    """
    trt = import_tensorrt()
    version = tuple(int(part) for part in trt.__version__.split(".")[:2] if part.isdigit())
    if np.dtype(dtype) == np.uint8 and version < (8, 5):
        raise UserError(f"{path} takes uint8 images, which TensorRT {trt.__version__} cannot take as a network "
                        "input (8.5 and later can); convert with create_onnx.py --input_dtype float32")
