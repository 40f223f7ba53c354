#!/usr/bin/env python3
"""Run an EfficientDet TensorRT engine (or its ONNX, on the CPU) over an image or a folder of images.

For every input image it writes, in --output, a visualization PNG and a
tab-separated .txt with one `xmin ymin xmax ymax score class` line per
detection (original-image pixels, class 0-based). --onnx runs the converted
ONNX on the CPU (ONNX Runtime plus this project's NumPy NMS), so a model can be
checked without a GPU. Without --input it benchmarks the model instead.
"""

import argparse
import json
import logging
import os
import time

import numpy as np

from tqdm import tqdm

from common import UserError, atomic_output, run_cli, setup_logging
from image_batcher import add_preprocessing_argument

log = logging.getLogger("infer")

DEFAULT_LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "labels_coco.txt")


def read_labels(path):
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such labels file; pass one class name per line with --labels")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def output_stems(paths, input_root):
    """Output names (without extension) per input; files sharing a base name keep their extension."""
    root = input_root if os.path.isdir(input_root) else os.path.dirname(input_root)
    relative = [os.path.relpath(p, root) for p in paths]
    bases = [os.path.splitext(r)[0] for r in relative]
    counts = {}
    for base in bases:
        counts[base] = counts.get(base, 0) + 1
    return {p: (b if counts[b] == 1 else r) for p, r, b in zip(paths, relative, bases)}


def open_runner(args, layout_optimizations=True):
    """The runner --engine or --onnx names (not yet activated); layout_optimizations: see cpu_session_options."""
    from runners import OnnxCpuRunner, TensorRTRunner

    if bool(args.engine) == bool(args.onnx):
        raise UserError("give the model with exactly one of --engine (TensorRT) or --onnx (CPU)")
    if args.engine:
        return TensorRTRunner(args.engine, use_cuda_graph=getattr(args, "cuda_graph", False),
                              verbose=getattr(args, "verbose", False))
    return OnnxCpuRunner(args.onnx, layout_optimizations=layout_optimizations)


def percentile_summary(values_ms):
    values = np.asarray(values_ms)
    return (f"mean {values.mean():.2f} ms, median {np.median(values):.2f} ms, "
            f"p99 {np.percentile(values, 99):.2f} ms")


def benchmark(runner, batch_size, warmup, iterations):
    """Time the model on random input: end-to-end (host to host) and, on TensorRT, GPU compute."""
    spec = runner.input_spec()
    shape = (batch_size,) + tuple(d if d else 512 for d in spec.shape[1:])
    images = np.random.default_rng(0).uniform(0, 255, size=shape).astype(spec.dtype)
    for _ in range(warmup):
        runner.infer({spec.name: images})
    end_to_end, compute = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        runner.infer({spec.name: images})
        end_to_end.append((time.perf_counter() - start) * 1000)
        gpu_ms = getattr(runner, "last_gpu_ms", None)
        if gpu_ms is not None:
            compute.append(gpu_ms)
    print(f"{runner.name}, batch {batch_size}, {iterations} runs after {warmup} warm-up:")
    print(f"  end-to-end latency: {percentile_summary(end_to_end)}; "
          f"throughput {batch_size * 1000 / np.mean(end_to_end):.1f} images/s")
    if compute:
        print(f"  GPU compute:        {percentile_summary(compute)}; "
              f"throughput {batch_size * 1000 / np.mean(compute):.1f} images/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-e", "--engine", help="TensorRT engine to run (from build_engine.py)")
    parser.add_argument("--onnx", help="converted ONNX model to run on the CPU instead (from create_onnx.py)")
    parser.add_argument("-i", "--input", help="an image file or a folder of .jpg/.jpeg/.png/.bmp; "
                        "without it, benchmark the model")
    parser.add_argument("-o", "--output", help="folder for the visualizations and result files")
    parser.add_argument("-l", "--labels", default=DEFAULT_LABELS, help="class names, one per line (class 0 first)")
    parser.add_argument("-t", "--nms_threshold", type=float, default=0.0,
                        help="drop detections scoring below this (after the model's own NMS threshold)")
    parser.add_argument("-b", "--batch_size", type=int, default=None,
                        help="images per batch (default: the model's fixed batch, else 1)")
    parser.add_argument("--recursive", action="store_true", help="also read images in subfolders")
    parser.add_argument("--max_images", type=int, default=None, help="stop after this many images")
    parser.add_argument("--no_visualizations", action="store_true", help="write only the .txt results")
    parser.add_argument("--results_json", help="also write all detections as one COCO-style results JSON here "
                        "(image_id = output name, category_id = class + 1)")
    parser.add_argument("--draft", action="store_true", help="decode large JPEGs at reduced resolution (faster, "
                        "slightly different pixels)")
    parser.add_argument("--workers", type=int, default=None, help="image decoding threads (default: CPU count)")
    add_preprocessing_argument(parser)
    parser.add_argument("--cuda_graph", action="store_true", help="TensorRT: replay fixed-shape runs as a CUDA graph")
    parser.add_argument("--warmup", type=int, default=10, help="benchmark mode: warm-up runs")
    parser.add_argument("--iterations", type=int, default=100, help="benchmark mode: timed runs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from detections import coco_results, split_batch, write_tsv
    from image_batcher import ImageBatcher, Preprocessing, load_rgb
    from visualize import visualize_detections

    if args.input and not args.output:
        raise UserError("--input needs --output, the folder to write results into")
    labels = read_labels(args.labels)
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"{args.output}: exists and is not a folder; --output takes a folder")
    with open_runner(args) as runner:
        spec = runner.input_spec()
        batch_size = args.batch_size or runner.fixed_batch or 1
        if runner.fixed_batch and batch_size != runner.fixed_batch:
            raise UserError(f"{runner.name} has a fixed batch of {runner.fixed_batch}; drop --batch_size or give that")
        if not args.input:
            benchmark(runner, batch_size, args.warmup, args.iterations)
            return 0
        batcher = ImageBatcher(args.input, runner.input_hw, runner.input_layout, batch_size, spec.dtype,
                               max_num_images=args.max_images, recursive=args.recursive, workers=args.workers,
                               draft=args.draft, preprocessing=Preprocessing.for_runner(args.preprocessing, runner))
        os.makedirs(args.output, exist_ok=True)
        stems = output_stems(batcher.files, args.input)
        images = detections_total = 0
        coco = []
        start = time.perf_counter()
        with tqdm(total=len(batcher.files), unit="img", desc="infer", disable=None) as progress:
            for batch, infos in batcher:
                outputs = runner.infer({spec.name: batch})
                for info, found in zip(infos, split_batch(outputs, infos, args.nms_threshold)):
                    stem = os.path.join(args.output, stems[info.path])
                    os.makedirs(os.path.dirname(stem), exist_ok=True)
                    write_tsv(stem + ".txt", found)
                    if not args.no_visualizations:
                        drawn = visualize_detections(load_rgb(info.path)[0], found.boxes, found.scores,
                                                     found.classes, labels)
                        with atomic_output(stem + ".png") as handle:
                            drawn.save(handle, format="PNG")
                    if args.results_json:
                        coco += coco_results(found, stems[info.path])
                    images += 1
                    detections_total += len(found)
                progress.update(len(infos))
        elapsed = time.perf_counter() - start
    if args.results_json:
        with atomic_output(args.results_json, "w") as handle:
            json.dump(coco, handle)
    skipped = f", {len(batcher.skipped)} unreadable skipped" if batcher.skipped else ""
    print(f"{images} images, {detections_total} detections, {images / elapsed:.2f} images/s "
          f"({runner.name}){skipped}; results in {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
