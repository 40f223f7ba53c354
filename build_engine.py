#!/usr/bin/env python3
"""Build a TensorRT engine (TensorRT 8.6, 10.x or 11.x) from an ONNX graph made by create_onnx.py.

Precision: fp32, or fp16 with the NMS plugin kept in FP32. On TensorRT 8.6/10.x
FP16 is enabled with the builder flag; TensorRT 11.x builds only strongly typed
networks, so the FP16 is written into the ONNX first, on the CPU
(precision.py). --save_onnx writes the graph that will be built; with
--save_onnx and no --engine, only that precision work runs (no TensorRT or GPU
needed). INT8 and mixed precision are not available yet.
"""

import argparse
import logging
import os
import time

from common import UserError, run_cli, setup_logging, write_bytes_atomic

log = logging.getLogger("build_engine")


def parse_batch_range(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UserError(f"--dynamic_batch_size {text!r}: give MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, e.g. 1,8,16")
    return tuple(values)


def load_onnx(path):
    import onnx

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such ONNX file; create it with create_onnx.py")
    try:
        return onnx.load(path)
    except Exception as error:
        raise UserError(f"{path}: not a readable ONNX model ({type(error).__name__}); re-create it with "
                        "create_onnx.py") from None


def graph_to_build(model, precision, fp16_in_onnx):
    """The ONNX that TensorRT will parse: FP16 written in when the TensorRT version needs it."""
    if precision == "fp16" and fp16_in_onnx:
        import precision as precision_work

        return precision_work.to_fp16(model)
    return model


def build(args, model):
    import cuda_memory
    import trt_adapter
    import trt_builder

    cuda = cuda_memory.load_cuda()
    cuda_memory.require_gpu(cuda)  # before any TensorRT object: TensorRT without a GPU can crash
    trt = trt_adapter.import_tensorrt()
    log.info("TensorRT %s", trt.__version__)
    model = graph_to_build(model, args.precision, trt_builder.fp16_in_onnx())
    if args.save_onnx:
        write_bytes_atomic(args.save_onnx, model.SerializeToString())
    logger = trt_adapter.make_logger(args.verbose)
    trt_adapter.init_plugins(logger)
    builder = trt.Builder(logger)
    network = trt_builder.create_network(builder)
    trt_builder.parse_onnx(network, logger, model.SerializeToString(), args.onnx)
    trt_builder.check_plugins(network, args.onnx)
    batch_range = args.dynamic_batch_size or (args.batch_size,) * 3
    config = trt_builder.configure(builder, network, args.workspace, batch_range)
    if args.precision == "fp16" and not trt_builder.fp16_in_onnx():
        trt_builder.enable_fp16_with_fp32_nms(config, network)
    cache = trt_builder.load_timing_cache(config, args.timing_cache)
    start = time.perf_counter()
    data = trt_builder.build_serialized(builder, network, config, logger, args.onnx)
    write_bytes_atomic(args.engine, data)
    if args.timing_cache:
        write_bytes_atomic(args.timing_cache, bytes(memoryview(cache.serialize())))
    log.info("built %s (%s, %.1f MB) in %.0f s", args.engine, args.precision, len(data) / 1e6,
             time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-o", "--onnx", required=True, help="ONNX graph from create_onnx.py")
    parser.add_argument("-e", "--engine", help="engine file to write")
    parser.add_argument("-p", "--precision", default="fp16", choices=["fp32", "fp16"], help="engine precision")
    parser.add_argument("--batch_size", type=int, default=1, help="batch to build for (dynamic-batch ONNX without "
                        "--dynamic_batch_size)")
    parser.add_argument("--dynamic_batch_size", type=parse_batch_range, default=None, metavar="MIN,OPT,MAX",
                        help="batch range of a dynamic-batch engine")
    parser.add_argument("-w", "--workspace", type=float, default=8, help="builder workspace limit, GiB")
    parser.add_argument("--timing_cache", help="timing cache file: read if it exists, written after the build")
    parser.add_argument("--save_onnx", help="also write the ONNX graph that is built (with --precision fp16 on "
                        "TensorRT 11.x, or without --engine: the FP16 ONNX)")
    parser.add_argument("-v", "--verbose", action="store_true", help="verbose TensorRT log")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not args.engine and not args.save_onnx:
        raise UserError("give --engine (build an engine) and/or --save_onnx (write the graph to build)")
    if args.batch_size < 1:
        raise UserError("--batch_size must be at least 1")
    model = load_onnx(args.onnx)
    if not args.engine:
        write_bytes_atomic(args.save_onnx, graph_to_build(model, args.precision, True).SerializeToString())
        log.info("wrote the %s graph to %s (no engine built)", args.precision, args.save_onnx)
        return 0
    build(args, model)
    return 0


if __name__ == "__main__":
    run_cli(main)
