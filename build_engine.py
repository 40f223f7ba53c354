#!/usr/bin/env python3
"""Build a TensorRT engine (TensorRT 8.6, 10.x or 11.x) from an ONNX graph made by create_onnx.py.

Precision: fp32, fp16 (the NMS plugin kept in FP32), int8, and mixed (INT8
with the stem and blocks_0..2 kept out of INT8), calibrated on --calib_input
images (TensorRT's entropy or min-max method, --calib_method) or taken from an
existing --calib_cache (TensorRT's text format, the same file on every version).

TensorRT 8.6/10.x: builder flags and TensorRT's own calibrators. TensorRT
11.x builds strongly typed networks only, so the precision is written into the
ONNX first, on the CPU: a float16 graph (fp16.py), or explicit Q/DQ with
scales calibrated through ONNX Runtime (quantize.py). --save_onnx writes the
graph that will be built; with --save_onnx and no --engine only that work runs
(no TensorRT or GPU needed).
"""

import json
import logging
import os
import time

from efficientdet_trt.convert.self_check import write_checked_onnx
from efficientdet_trt.core.common import (
    ArgumentParser,
    UserError,
    check_not_an_input,
    check_output_file,
    positive_float,
    positive_int,
    run_cli,
    setup_logging,
    write_bytes_atomic,
)
from efficientdet_trt.precision.calibration import CACHE_KINDS
from efficientdet_trt.precision.quantize import MIXED_KEPT_SCOPES
from efficientdet_trt.run.onnx_runner import load_detector_onnx
from image_batcher import add_preprocessing_argument

log = logging.getLogger("build_engine")

# Below this many calibration images the build log warns (README, "INT8": calibrated on 4 images the demo
# model gave 573 detections where FP32 gave 25).
MIN_SENSIBLE_CALIBRATION = 100


def parse_batch_range(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UserError(f"--dynamic_batch_size {text!r}: give MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, e.g. 1,8,16")
    return tuple(values)


def check_outputs(args):
    """Every file this run will write, checked before the ONNX is read; none may be an input or lie in the
    calibration image folder (the timing cache is read and written: it is its own input)."""
    calibrating = args.precision in ("int8", "mixed")
    writes_cache = calibrating and args.calib_cache and not os.path.isfile(args.calib_cache)
    inputs = {"--onnx": args.onnx, "--calib_input": args.calib_input if calibrating else None,
              "--calib_cache": args.calib_cache if calibrating and not writes_cache else None}
    if calibrating and args.calib_cache and args.calib_input:  # an existing "cache" there is one of the images
        check_not_an_input(args.calib_cache, "--calib_cache", {"--calib_input": args.calib_input})
    outputs = [(args.engine, "--engine"), (args.save_onnx, "--save_onnx"), (args.timing_cache, "--timing_cache")]
    if writes_cache:
        outputs.append((args.calib_cache, "--calib_cache"))
    for path, flag in outputs:
        if not path:
            continue
        check_output_file(path, flag, inputs)


def check_source_precision(model, path, precision):
    """A graph build_engine.py already converted (float16, or INT8 Q/DQ) cannot be converted again."""
    import onnx

    quantized = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for value in model.graph.input)
    if precision != "fp32" and (quantized or half):
        kind = "an INT8 Q/DQ" if quantized else "a float16"
        raise UserError(f"{path}: is already {kind} graph (written by --save_onnx?); give the float32 ONNX from "
                        "create_onnx.py, or --precision fp32 to build this graph as it is")


def graph_to_build(model, args, batcher):
    """The ONNX with its precision written in (FP16 conversion, or INT8 Q/DQ calibrated on the CPU)."""
    if args.precision == "fp16":
        from efficientdet_trt.precision.fp16 import to_fp16

        return to_fp16(model)
    if args.precision in ("int8", "mixed"):
        from efficientdet_trt.precision import quantize

        return quantize.to_int8(model, args.precision == "mixed", batcher, args.calib_cache,
                                method=args.calib_method)
    return model


def check_calibration(args, model):
    """INT8 inputs checked on the CPU before any GPU work: an ImageBatcher, or None when a cache is reused."""
    if args.precision not in ("int8", "mixed"):
        return None
    from efficientdet_trt.precision import calibration

    if args.calib_cache and os.path.isfile(args.calib_cache):
        calibration.read_cache(args.calib_cache, args.calib_method)  # clear errors before building
        log.info("calibration cache %s exists: calibration is skipped", args.calib_cache)
        return None
    if not args.calib_input:
        raise UserError(f"--precision {args.precision} needs calibration images (--calib_input) or an existing "
                        "calibration cache (--calib_cache)")
    from efficientdet_trt.core.metadata import FAMILY_KEY
    from efficientdet_trt.run.onnx_runner import onnx_input_dtype, onnx_input_mean, onnx_input_shape, onnx_metadata
    from efficientdet_trt.run.runner import image_layout
    from image_batcher import ImageBatcher, Preprocessing, list_images

    shape = onnx_input_shape(model)
    if shape[0] is not None and shape[0] != args.calib_batch_size:
        raise UserError(f"{args.onnx} has a fixed batch of {shape[0]}: calibrate with --calib_batch_size {shape[0]}")
    layout, size = image_layout(shape, args.onnx)
    batcher = ImageBatcher(args.calib_input, size, layout, args.calib_batch_size, onnx_input_dtype(model),
                           max_num_images=args.calib_num_images, exact_batches=True, shuffle=True,
                           preprocessing=Preprocessing.for_model(args.preprocessing, onnx_input_mean(model),
                                                                 onnx_metadata(model).get(FAMILY_KEY)))
    found = len(list_images(args.calib_input))
    used = len(batcher.files)
    why = []
    if found > args.calib_num_images:
        why.append(f"--calib_num_images {args.calib_num_images}")
    if used < min(found, args.calib_num_images):
        why.append(f"whole batches of {args.calib_batch_size} only")
    log.info("calibrating on %d of the %d image(s) in %s (%d batch(es) of %d%s)", used, found, args.calib_input,
             used // args.calib_batch_size, args.calib_batch_size, f"; {', '.join(why)}" if why else "")
    if used < MIN_SENSIBLE_CALIBRATION:
        log.warning("%d calibration images is few: INT8 ranges measured on so few images can be far off (the "
                    "README's INT8 section says how many to use)", used)
    return batcher


def build(args, model, batcher):
    from efficientdet_trt.engine import builder as trt_builder
    from efficientdet_trt.engine import cuda_memory, trt_adapter
    from efficientdet_trt.engine.tensorrt_runner import engine_metadata_path
    from efficientdet_trt.run.onnx_runner import onnx_input_dtype, onnx_metadata

    trt = trt_adapter.import_tensorrt()
    trt_adapter.check_input_dtype(onnx_input_dtype(model), args.onnx)
    cuda = cuda_memory.load_cuda()
    cuda_memory.require_gpu(cuda)  # before any TensorRT object: TensorRT without a GPU can crash
    log.info("TensorRT %s", trt.__version__)
    metadata = onnx_metadata(model)
    in_onnx = trt_builder.precision_in_onnx()
    if in_onnx:
        model = graph_to_build(model, args, batcher)
    if args.save_onnx:
        write_checked_onnx(args.save_onnx, model)
    logger = trt_adapter.make_logger(args.verbose)
    trt_adapter.init_plugins(logger)
    builder = trt.Builder(logger)
    network = trt_builder.create_network(builder)
    trt_builder.parse_onnx(network, logger, model.SerializeToString(), args.onnx)
    trt_builder.check_plugins(network, args.onnx)
    batch_range = args.dynamic_batch_size or (args.batch_size,) * 3
    config = trt_builder.configure(builder, network, args.workspace, batch_range)
    if args.precision == "fp16" and not in_onnx:
        trt_builder.enable_fp16_with_fp32_nms(config, network)
    if args.precision in ("int8", "mixed") and not in_onnx:
        trt_builder.warn_if_partial_cache(network, args.calib_cache)
        calibrator = trt_builder.make_calibrator(batcher, args.calib_cache, cuda, args.calib_method)
        kept = MIXED_KEPT_SCOPES if args.precision == "mixed" else ()  # the precision stage's decision
        trt_builder.enable_int8(builder, config, network, calibrator, args.calib_batch_size, kept)
    cache = trt_builder.load_timing_cache(config, args.timing_cache)
    start = time.perf_counter()
    data = trt_builder.build_serialized(builder, network, config, logger, args.onnx)
    write_bytes_atomic(args.engine, data)
    write_bytes_atomic(engine_metadata_path(args.engine), json.dumps(metadata, indent=1).encode())
    if args.timing_cache:
        write_bytes_atomic(args.timing_cache, bytes(memoryview(cache.serialize())))
    log.info("built %s (%s, %.1f MB) in %.0f s", args.engine, args.precision, len(data) / 1e6,
             time.perf_counter() - start)


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("-o", "--onnx", required=True, help="ONNX graph from create_onnx.py")
    parser.add_argument("-e", "--engine", help="engine file to write")
    parser.add_argument("-p", "--precision", default="fp16", choices=["fp32", "fp16", "int8", "mixed"],
                        help="engine precision")
    parser.add_argument("--calib_input", help="folder of calibration images (int8/mixed)")
    parser.add_argument("--calib_cache", help="calibration cache: reused if it exists (no images read), written "
                        "after calibration otherwise")
    parser.add_argument("--calib_method", default="entropy", choices=list(CACHE_KINDS),
                        help="INT8 threshold per tensor: TensorRT's entropy method (clips rare outliers) or the "
                        "largest |value| seen (minmax, no clipping)")
    parser.add_argument("--calib_num_images", type=positive_int, default=5000,
                        help="calibration images to use at most")
    parser.add_argument("--calib_batch_size", type=positive_int, default=8, help="calibration batch size")
    add_preprocessing_argument(parser)
    parser.add_argument("--batch_size", type=positive_int, default=1,
                        help="batch to build for (dynamic-batch ONNX without --dynamic_batch_size)")
    parser.add_argument("--dynamic_batch_size", type=parse_batch_range, default=None, metavar="MIN,OPT,MAX",
                        help="batch range of a dynamic-batch engine")
    parser.add_argument("-w", "--workspace", type=positive_float, default=8, help="builder workspace limit, GiB")
    parser.add_argument("--timing_cache", help="timing cache file: read if it exists, written after the build")
    parser.add_argument("--save_onnx", help="write the ONNX with its precision written in (FP16 graph or INT8 "
                        "Q/DQ graph), as TensorRT 11.x builds it; without --engine, only this is done")
    parser.add_argument("-v", "--verbose", action="store_true", help="verbose TensorRT log")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not args.engine and not args.save_onnx:
        raise UserError("give --engine (build an engine) and/or --save_onnx (write the graph to build)")
    check_outputs(args)
    model = load_detector_onnx(args.onnx)
    check_source_precision(model, args.onnx, args.precision)
    batcher = check_calibration(args, model)
    if not args.engine:
        write_checked_onnx(args.save_onnx, graph_to_build(model, args, batcher))
        log.info("wrote the %s graph to %s (no engine built)", args.precision, args.save_onnx)
        return 0
    build(args, model, batcher)
    return 0


if __name__ == "__main__":
    run_cli(main)
