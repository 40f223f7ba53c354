"""Triton Inference Server model configurations (config.pbtxt) for this project's engines and ONNX graphs.

The model's I/O is described once (`ModelIO`: names, numpy types, shapes with
None for the batch, the batch range) from an ONNX graph (`describe_onnx`) or a
TensorRT engine (`describe_engine`, through trt_adapter); `config_text` turns
that into the text format of Triton's ModelConfig protobuf (model_config.proto
in triton-inference-server/common): platform `tensorrt_plan` or
`onnxruntime_onnx`, max_batch_size from the batch range (0 and full dims for a
fixed batch), dims without the batch, dynamic batching with preferred sizes
inside the range, and instance groups.
"""

import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from efficientdet_trt.core.common import UserError
from efficientdet_trt.run.runner import PLUGIN_OPS

log = logging.getLogger("triton")

TENSORRT_PLAN, ONNXRUNTIME = "tensorrt_plan", "onnxruntime_onnx"
MODEL_FILES = {TENSORRT_PLAN: "model.plan", ONNXRUNTIME: "model.onnx"}
LABELS_FILE = "labels.txt"
TRITON_TYPES = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float16): "TYPE_FP16", np.dtype(np.uint8): "TYPE_UINT8",
                np.dtype(np.int8): "TYPE_INT8", np.dtype(np.int32): "TYPE_INT32", np.dtype(np.int64): "TYPE_INT64",
                np.dtype(np.bool_): "TYPE_BOOL"}


@dataclass
class Tensor:
    name: str
    dtype: np.dtype
    shape: Tuple[Optional[int], ...]  # None for a dynamic dimension (the batch)


@dataclass
class ModelIO:
    """What Triton needs to know of a model: its platform, tensors and the batch sizes it takes."""

    platform: str
    inputs: List[Tensor]
    outputs: List[Tensor]
    batch: Optional[Tuple[int, int, int]]  # (min, opt, max) of a dynamic batch; None when the batch is fixed
    class_names: Optional[List[str]] = None


def describe_onnx(model, path, max_batch_size=8, class_names=None):
    """ModelIO of an ONNX graph; a dynamic batch is served up to `max_batch_size` (ONNX has no profile)."""
    import onnx

    plugins = sorted({node.op_type for node in model.graph.node if node.op_type in PLUGIN_OPS})
    if plugins:
        raise UserError(f"{path} ends in {plugins[0]}, a TensorRT plugin ONNX Runtime cannot run: serve the engine "
                        "built from it (--engine), or convert with create_onnx.py --onnx_nms for onnxruntime_onnx")

    def tensors(values):
        found = []
        for value in values:
            dims = value.type.tensor_type.shape.dim
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
            found.append(Tensor(value.name, dtype, tuple(d.dim_value if d.HasField("dim_value") else None
                                                          for d in dims)))
        return found

    inputs, outputs = tensors(model.graph.input), tensors(model.graph.output)
    dynamic = inputs[0].shape[0] is None
    batch = (1, max_batch_size, max_batch_size) if dynamic else None
    return ModelIO(ONNXRUNTIME, inputs, outputs, batch, class_names)


def describe_engine_io(io_tensors, input_profile, class_names=None):
    """ModelIO of an engine from trt_adapter.io_tensors' list and the input's (min, opt, max) profile shapes."""
    def shape(dims):
        return tuple(None if d < 0 else int(d) for d in dims)

    inputs = [Tensor(name, dtype, shape(dims)) for name, is_input, dtype, dims in io_tensors if is_input]
    outputs = [Tensor(name, dtype, shape(dims)) for name, is_input, dtype, dims in io_tensors if not is_input]
    batch = None
    if inputs[0].shape[0] is None:
        batch = tuple(int(dims[0]) for dims in input_profile)
    return ModelIO(TENSORRT_PLAN, inputs, outputs, batch, class_names)


def describe_engine(path, class_names=None):
    """ModelIO of a TensorRT engine file (needs TensorRT and a GPU to deserialize it)."""
    from efficientdet_trt.engine import cuda_memory, trt_adapter

    trt_adapter.check_engine_file(path)
    trt = trt_adapter.import_tensorrt()
    cuda_memory.require_gpu(cuda_memory.load_cuda())
    logger = trt_adapter.make_logger()
    trt_adapter.init_plugins(logger)
    engine = trt_adapter.load_engine(trt.Runtime(logger), logger, path)
    tensors = trt_adapter.io_tensors(engine)
    first_input = next(name for name, is_input, _, _ in tensors if is_input)
    return describe_engine_io(tensors, trt_adapter.profile_shapes(engine, first_input), class_names)


def preferred_batch_sizes(batch):
    """The profile's optimum and maximum (a TensorRT profile is tuned for its opt batch)."""
    low, opt, high = batch
    return sorted({size for size in (opt, high) if low <= size <= high})


def _dims(tensor, batched):
    dims = tensor.shape[1:] if batched else tensor.shape
    if any(d is None for d in dims):
        raise UserError(f"tensor {tensor.name} has a dynamic dimension besides the batch ({tensor.shape}); "
                        "Triton needs fixed image sizes here")
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _triton_type(tensor):
    try:
        return TRITON_TYPES[np.dtype(tensor.dtype)]
    except KeyError:
        raise UserError(f"tensor {tensor.name} has type {tensor.dtype}, which this exporter does not map to "
                        "Triton") from None


def config_text(io, name, max_batch_size=None, instances=1):
    """The config.pbtxt text for `io`; `max_batch_size` (at most the batch range's maximum) defaults to it."""
    lines = [f'name: "{name}"', f'platform: "{io.platform}"']
    if io.batch is None:
        if max_batch_size:
            raise UserError(f"the model's batch is fixed at {io.inputs[0].shape[0]}: Triton serves it with "
                            "max_batch_size 0; leave --max_batch_size out")
        lines.append("max_batch_size: 0")
    else:
        high = io.batch[2]
        if max_batch_size and max_batch_size > high:
            raise UserError(f"--max_batch_size {max_batch_size} is above the model's largest batch ({high})")
        lines.append(f"max_batch_size: {max_batch_size or high}")
    batched = io.batch is not None
    for kind, tensors in (("input", io.inputs), ("output", io.outputs)):
        for tensor in tensors:
            entry = [f'  name: "{tensor.name}"', f"  data_type: {_triton_type(tensor)}",
                     f"  dims: {_dims(tensor, batched)}"]
            if kind == "output" and io.class_names and tensor.name == "detection_classes":
                entry.append(f'  label_filename: "{LABELS_FILE}"')
            lines += [f"{kind} {{", *entry, "}"]
    if batched:
        low, opt, high = io.batch
        top = max_batch_size or high
        sizes = [size for size in preferred_batch_sizes((low, opt, top)) if size > 1] or [top]
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {', '.join(str(s) for s in sizes)} ]", "}"]
    kind = "  kind: KIND_GPU" if io.platform == TENSORRT_PLAN else None
    lines += ["instance_group {", f"  count: {instances}", *([kind] if kind else []), "}"]
    return "\n".join(lines) + "\n"
