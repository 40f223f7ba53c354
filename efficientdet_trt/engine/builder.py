"""The TensorRT builder half of the version adapter (runtime half: trt_adapter.py).

Every builder difference between TensorRT 8.6, 10.x and 11.x is here (NVIDIA's
8.x->10.x and 10.x->11.x migration guides):
- network: 8.6 needs the EXPLICIT_BATCH creation flag; 10.x ignores it (deprecated)
  and 11.x has no weak typing at all, so both take flags 0;
- workspace: set_memory_pool_limit(WORKSPACE) on every version (max_workspace_size
  was removed in 10.0);
- build: build_serialized_network on every version (build_engine removed in 10.0);
- FP16: BuilderFlag.FP16 on 8.6/10.x, with the NMS plugin layer pinned to FP32;
  11.x removed the flag: the FP16 must already be in the ONNX (precision.to_fp16);
- INT8: IInt8EntropyCalibrator2/IInt8MinMaxCalibrator and the INT8 flag on 8.6/10.x; 11.x removed both:
  the ONNX must carry explicit Q/DQ (quantize.to_int8).
Checked statically against the TensorRT 10.13 stubs (the lean 11.x package has
no builder to generate stubs from).
"""

import logging
import os
from typing import TYPE_CHECKING

from efficientdet_trt.core.common import UserError
from efficientdet_trt.engine.trt_adapter import dims_tuple, import_tensorrt

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger("builder")

NMS_PLUGINS = ("EfficientNMS_TRT", "BatchedNMS_TRT")


def major_version():
    return int(import_tensorrt().__version__.split(".")[0])


def precision_in_onnx():
    """True when FP16/INT8 must be written into the ONNX (TensorRT 11.x: strongly typed networks only)."""
    return major_version() >= 11


def create_network(builder: "tensorrt.Builder") -> "tensorrt.INetworkDefinition":
    trt = import_tensorrt()
    if major_version() >= 10:
        return builder.create_network(0)
    return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))


def parse_onnx(network: "tensorrt.INetworkDefinition", logger, data, path):
    """Parse ONNX bytes into `network`; every parser error is listed in one line."""
    trt = import_tensorrt()
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
        raise UserError(f"{path}: TensorRT {trt.__version__}'s ONNX parser failed: {errors}")
    return parser


def check_plugins(network: "tensorrt.INetworkDefinition", path):
    """Fail clearly when the graph needs an NMS plugin this TensorRT does not have."""
    trt = import_tensorrt()
    registry = trt.get_plugin_registry()
    for name in NMS_PLUGINS:
        if any(name in network.get_layer(i).name or name in str(network.get_layer(i).type)
               for i in range(network.num_layers)):
            if registry.get_plugin_creator(name, "1", "") is None:
                raise UserError(f"{path}: needs the {name} plugin, which TensorRT {trt.__version__}'s plugin "
                                "library does not provide; install libnvinfer-plugin of this TensorRT version")


def _batch_profile(builder: "tensorrt.Builder", network: "tensorrt.INetworkDefinition", batches):
    """An optimization profile giving every network input (the image; image_size with --clip_to_image) the
    (min, opt, max) `batches`, its other dimensions as declared."""
    trt = import_tensorrt()
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = dims_tuple(tensor.shape)[1:]
        low, opt, high = (trt.Dims([batch, *rest]) for batch in batches)
        profile.set_shape(tensor.name, low, opt, high)
    return profile


def configure(builder: "tensorrt.Builder", network: "tensorrt.INetworkDefinition", workspace_gib, batch_range):
    """Builder config with the workspace limit and, for a dynamic batch, one optimization profile."""
    trt = import_tensorrt()
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    image = network.get_input(0)
    shape = dims_tuple(image.shape)
    if shape[0] < 0:
        low, opt, high = batch_range
        config.add_optimization_profile(_batch_profile(builder, network, (low, opt, high)))
        log.info("dynamic batch profile for %s: min %d, opt %d, max %d", image.name, low, opt, high)
    elif batch_range[2] != shape[0]:
        raise UserError(f"the ONNX input has a fixed batch of {shape[0]}; re-create it with a dynamic batch "
                        "(create_onnx.py --input_shape N,...) to build other batch sizes")
    return config


def enable_fp16_with_fp32_nms(config: "tensorrt.IBuilderConfig", network: "tensorrt.INetworkDefinition"):
    """TensorRT 8.6/10.x: allow FP16 kernels, but keep the NMS plugin layer and its outputs in FP32."""
    trt = import_tensorrt()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.PLUGIN_V2 or "nms" in layer.name:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                if layer.get_output(output).dtype == trt.float16:
                    layer.set_output_type(output, trt.float32)
            log.info("pinned %s to FP32", layer.name)


def load_timing_cache(config: "tensorrt.IBuilderConfig", path):
    data = b""
    if path and os.path.isfile(path):
        with open(path, "rb") as handle:
            data = handle.read()
        log.info("using timing cache %s", path)
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def build_serialized(builder: "tensorrt.Builder", network: "tensorrt.INetworkDefinition",
                     config: "tensorrt.IBuilderConfig", logger, path):
    trt = import_tensorrt()
    data = builder.build_serialized_network(network, config)
    if data is None:
        said = "; ".join(m for m in logger.messages[-5:] if m)
        raise UserError(f"{path}: TensorRT {trt.__version__} could not build an engine ({said or 'no reason given'})")
    return bytes(memoryview(data))


def make_calibrator(batcher, cache_path, cuda, method="entropy"):
    """TensorRT 8.6/10.x IInt8EntropyCalibrator2 (or IInt8MinMaxCalibrator) fed by an ImageBatcher.

    It reads and writes `cache_path`; with an existing cache TensorRT asks for no
    batch. The cache is TensorRT's own text format (see calibration.py), the same
    file on every version.
    """
    import numpy as np

    from efficientdet_trt.run.runner import WINDOW_INPUT, window_sizes

    trt = import_tensorrt()

    class Feed:
        """What both calibrators do: hand TensorRT the batcher's batches and the cache."""

        def __init__(self):
            self.batches = iter(batcher) if batcher is not None else None
            self.batch_size = batcher.batch_size if batcher is not None else 1
            self.device = None
            self.stream = cuda.create_stream()
            self.done = 0

        def get_batch_size(self):
            return self.batch_size

        def get_batch(self, names):
            if self.batches is None:
                return None
            try:
                batch, infos = next(self.batches)
            except StopIteration:
                return None
            arrays = {name: batch for name in names}
            if WINDOW_INPUT in arrays:  # a --clip_to_image graph's second input
                arrays[WINDOW_INPUT] = window_sizes(len(batch), infos, (batcher.height, batcher.width))
            if self.device is None:
                self.device = {name: cuda.malloc(array.nbytes) for name, array in arrays.items()}
            for name, array in arrays.items():
                cuda.copy_to_device(self.device[name], np.ascontiguousarray(array), self.stream)
            cuda.synchronize(self.stream)
            self.done += len(batch)
            log.info("calibration: %d images", self.done)
            return [self.device[name] for name in names]

        def read_calibration_cache(self):
            if cache_path and os.path.isfile(cache_path):
                log.info("using calibration cache %s", cache_path)
                with open(cache_path, "rb") as handle:
                    return handle.read()
            return None

        def write_calibration_cache(self, cache):
            if cache_path:
                from efficientdet_trt.core.common import write_bytes_atomic

                write_bytes_atomic(cache_path, bytes(memoryview(cache)))
                log.info("wrote calibration cache %s", cache_path)

    class EntropyCalibrator(Feed, trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            Feed.__init__(self)

    class MinMaxCalibrator(Feed, trt.IInt8MinMaxCalibrator):
        def __init__(self):
            trt.IInt8MinMaxCalibrator.__init__(self)
            Feed.__init__(self)

    return MinMaxCalibrator() if method == "minmax" else EntropyCalibrator()


def warn_if_partial_cache(network: "tensorrt.INetworkDefinition", cache_path):
    """Warn when an existing calibration cache covers few of the network's tensors.

    A cache written by the 11.x Q/DQ path (quantize.py) holds the Conv inputs only;
    TensorRT 8.6/10.x keeps every layer touching a tensor without a scale out of INT8.
    """
    from efficientdet_trt.precision import calibration

    if not cache_path or not os.path.isfile(cache_path):
        return
    covered = len(calibration.read_cache(cache_path))
    tensors = sum(network.get_layer(i).num_outputs for i in range(network.num_layers))
    if covered < tensors // 2:
        log.warning("%s has scales for %d of the network's %d tensors (a cache from the Q/DQ path?): layers "
                    "touching the others stay out of INT8; delete it to let TensorRT calibrate every tensor",
                    cache_path, covered, tensors)


def enable_int8(builder: "tensorrt.Builder", config: "tensorrt.IBuilderConfig",
                network: "tensorrt.INetworkDefinition", calibrator, calib_batch, fp16_scopes=()):
    """TensorRT 8.6/10.x implicit INT8: calibrator, INT8+FP16 flags, NMS pinned FP32, and the layers whose
    names contain one of `fp16_scopes` pinned to FP16 (mixed: the precision stage's MIXED_KEPT_SCOPES)."""
    trt = import_tensorrt()
    enable_fp16_with_fp32_nms(config, network)
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    if dims_tuple(network.get_input(0).shape)[0] < 0:  # dynamic batch: calibrate at the calibration batch size
        config.set_calibration_profile(_batch_profile(builder, network, (calib_batch,) * 3))
    if fp16_scopes:
        kept = 0
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if any(scope in layer.name for scope in fp16_scopes):
                layer.precision = trt.float16
                kept += 1
        log.info("mixed precision: %d layers kept at FP16 (%s)", kept, ", ".join(fp16_scopes))
