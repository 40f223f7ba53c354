#!/usr/bin/env python3
"""Run an EfficientDet TensorRT engine (or its ONNX, on the CPU) over an image or a folder of images.

For every input image it writes, in --output, a visualization PNG and a
tab-separated .txt with one `xmin ymin xmax ymax score class` line per
detection (original-image pixels of the image as displayed, EXIF orientation
applied; class 0-based). infer_manifest.json in --output lists every file
infer.py wrote there and which run wrote it; a file it did not write is never
replaced (the run stops first, naming it), and one run at a time writes into a
folder. An image's files always come from the latest run that read it: an
older PNG is removed under --no_visualizations, and an image that can no
longer be read loses the files an earlier run wrote for it.
Boxes with no area left after clipping to the image are dropped. --onnx runs
the converted ONNX on the CPU (ONNX Runtime plus this project's NumPy NMS), so
a model can be checked without a GPU. Without --input it benchmarks the model instead.
"""

import json
import logging
import os
import time

import numpy as np
from tqdm import tqdm

from efficientdet_trt.core.common import (
    ArgumentParser,
    UserError,
    atomic_output,
    check_output_file,
    check_output_folder,
    check_separate_folders,
    nonnegative_int,
    positive_int,
    prepare_output_folder,
    run_cli,
    setup_logging,
    unit_interval,
)
from efficientdet_trt.core.output_folder import OutputFolder
from efficientdet_trt.engine.gpu_preprocess import add_device_argument
from efficientdet_trt.run.open_model import check_model_arguments, open_runner
from image_batcher import add_preprocessing_argument

log = logging.getLogger("infer")

RESULT_EXTENSIONS = (".txt", ".png")


def check_inputs_not_overwritten(stems, output, other_outputs=()):
    """Refuse a run that would write a result file over one of its input images."""
    inputs = {os.path.realpath(path) for path in stems}
    written = [os.path.join(output, stem) + ext for stem in stems.values() for ext in RESULT_EXTENSIONS]
    for path in written + [p for p in other_outputs if p]:
        if os.path.realpath(path) in inputs:
            raise UserError(f"{path}: is one of the input images and would be overwritten; choose another --output")


def remove_stale_results(folder, stem):
    """Remove the result files an earlier run wrote for an image this run could not read; returns their names."""
    return [stem + ext for ext in RESULT_EXTENSIONS if folder.remove(stem + ext)]


def output_stems(paths, input_root):
    """Output names (without extension) per input; files sharing a base name keep their extension."""
    root = input_root if os.path.isdir(input_root) else os.path.dirname(input_root)
    relative = [os.path.relpath(p, root) for p in paths]
    bases = [os.path.splitext(r)[0] for r in relative]
    counts = {}
    for base in bases:
        counts[base] = counts.get(base, 0) + 1
    return {p: (b if counts[b] == 1 else r) for p, r, b in zip(paths, relative, bases)}


def percentile_summary(values_ms):
    values = np.asarray(values_ms)
    return (f"mean {values.mean():.2f} ms, median {np.median(values):.2f} ms, "
            f"p99 {np.percentile(values, 99):.2f} ms")


def benchmark(runner, batch_size, warmup, iterations):
    """Time the model on random input: end-to-end (host to host) and, on TensorRT, GPU compute."""
    spec = runner.input_spec()
    shape = (batch_size,) + tuple(d if d else 512 for d in spec.shape[1:])
    images = np.random.default_rng(0).uniform(0, 255, size=shape).astype(spec.dtype)
    feed = runner.feed(images)
    for _ in range(warmup):
        runner.infer(feed)
    end_to_end, compute = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        runner.infer(feed)
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
    parser = ArgumentParser(__doc__)
    parser.add_argument("-e", "--engine", help="TensorRT engine to run (from build_engine.py)")
    parser.add_argument("--onnx", help="converted ONNX model to run on the CPU instead (from create_onnx.py)")
    parser.add_argument("-i", "--input", help="an image file or a folder of .jpg/.jpeg/.png/.bmp/.webp/.tif/.tiff; "
                        "without it, benchmark the model")
    parser.add_argument("-o", "--output", help="folder for the visualizations and result files")
    parser.add_argument("-l", "--labels", help="class names, one per line (class 0 first); default: the names "
                        "stored in the model (create_onnx.py --labels), else COCO's for 90 classes, else class_<n>")
    parser.add_argument("-t", "--nms_threshold", type=unit_interval, default=0.0,
                        help="drop detections scoring below this (after the model's own NMS threshold)")
    parser.add_argument("-b", "--batch_size", type=positive_int, default=None,
                        help="images per batch (default: the model's fixed batch, else 1)")
    parser.add_argument("--recursive", action="store_true", help="also read images in subfolders")
    parser.add_argument("--max_images", type=positive_int, default=None, help="stop after this many images")
    parser.add_argument("--no_visualizations", action="store_true", help="write only the .txt results")
    parser.add_argument("--results_json", help="also write all detections as one COCO-style results JSON here "
                        "(image_id = output name, category_id = class + 1)")
    parser.add_argument("--draft", action="store_true", help="decode large JPEGs at reduced resolution (faster, "
                        "slightly different pixels)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="image decoding threads (default: CPU count)")
    add_preprocessing_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--cuda_graph", action="store_true", help="TensorRT: replay fixed-shape runs as a CUDA graph")
    parser.add_argument("--warmup", type=nonnegative_int, default=10, help="benchmark mode: warm-up runs")
    parser.add_argument("--iterations", type=positive_int, default=100, help="benchmark mode: timed runs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from efficientdet_trt.core.labels import check_label_count, model_labels, read_labels
    from efficientdet_trt.engine import gpu_preprocess
    from efficientdet_trt.run.detections import coco_results, split_batch, write_tsv
    from image_batcher import Preprocessing, check_input_path, load_rgb
    from visualize import visualize_detections

    check_model_arguments(args.engine, args.onnx)
    if args.input and not args.output:
        raise UserError("--input needs --output, the folder to write results into")
    if args.output and not args.input:
        raise UserError("--output needs --input, the images to run; without --input infer.py benchmarks the model "
                        "and writes nothing")
    given_labels = read_labels(args.labels) if args.labels else None
    if args.input:
        check_input_path(args.input)
        check_separate_folders(args.input, args.output)
        inputs = {"--input": args.input, "--engine": args.engine, "--onnx": args.onnx, "--labels": args.labels}
        if args.results_json:
            check_output_file(args.results_json, "--results_json", inputs)
        check_output_folder(args.output, "--output")
    with open_runner(args.engine, args.onnx, cuda_graph=args.cuda_graph, verbose=args.verbose) as runner:
        check_label_count(given_labels, runner.metadata, args.labels, args.engine or args.onnx)
        labels = model_labels(runner.metadata, given_labels)
        batch_size = args.batch_size or runner.fixed_batch or 1
        if runner.fixed_batch and batch_size != runner.fixed_batch:
            raise UserError(f"{runner.name} has a fixed batch of {runner.fixed_batch}; drop --batch_size or give that")
        if not args.input:
            benchmark(runner, batch_size, args.warmup, args.iterations)
            return 0
        preprocessing = Preprocessing.for_runner(args.preprocessing, runner)
        batcher, engine = gpu_preprocess.batcher_for(
            runner, args.preprocess_on, preprocessing, args.input, batch_size, draft=args.draft,
            max_num_images=args.max_images, recursive=args.recursive, workers=args.workers)
        stems = output_stems(batcher.files, args.input)
        check_inputs_not_overwritten(stems, args.output, [args.results_json])
        prepare_output_folder(args.output, "--output")
        extensions = (".txt",) if args.no_visualizations else RESULT_EXTENSIONS
        with OutputFolder(args.output, args.input, args.engine or args.onnx) as folder:
            folder.claim([stem + ext for stem in stems.values() for ext in extensions])
            images = detections_total = 0
            coco, written = [], []
            start = time.perf_counter()
            with tqdm(total=len(batcher.files), unit="img", desc="infer", disable=None) as progress:
                for batch, infos in batcher:
                    outputs = engine.infer_device(infos) if engine else runner.infer(runner.feed(batch, infos))
                    for info, found in zip(infos, split_batch(outputs, infos, args.nms_threshold)):
                        stem = os.path.join(args.output, stems[info.path])
                        os.makedirs(os.path.dirname(stem), exist_ok=True)
                        write_tsv(stem + ".txt", found)
                        written.append(stems[info.path] + ".txt")
                        if not args.no_visualizations:
                            drawn = visualize_detections(load_rgb(info.path)[0], found.boxes, found.scores,
                                                         found.classes, labels)
                            with atomic_output(stem + ".png") as handle:
                                drawn.save(handle, format="PNG")
                            written.append(stems[info.path] + ".png")
                        else:
                            folder.remove(stems[info.path] + ".png")  # an earlier run's picture contradicts the .txt
                        if args.results_json:
                            coco += coco_results(found, stems[info.path])
                        images += 1
                        detections_total += len(found)
                    progress.update(len(infos))
            elapsed = time.perf_counter() - start
            stale = [name for path in batcher.skipped for name in remove_stale_results(folder, stems[path])]
            if stale:
                log.info("removed %d result file(s) an earlier run wrote for images now unreadable: %s", len(stale),
                         ", ".join(stale))
            folder.finish(written)
    if not images:
        raise UserError(f"{args.input}: none of its {len(batcher.files)} image(s) could be read (see the warnings "
                        "above); nothing was written")
    if args.results_json:
        with atomic_output(args.results_json, "w") as handle:
            json.dump(coco, handle)
    skipped = f", {len(batcher.skipped)} unreadable skipped" if batcher.skipped else ""
    print(f"{images} images, {detections_total} detections, {images / elapsed:.2f} images/s "
          f"({runner.name}){skipped}; results in {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
