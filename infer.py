#!/usr/bin/env python3
"""Run an EfficientDet over an image or a folder of images.

For every input image it writes, in --output, a visualization PNG and a
tab-separated .txt with one `xmin ymin xmax ymax score class` line per
detection (original-image pixels, class 0-based). --onnx runs the converted
ONNX on the CPU (ONNX Runtime plus this project's NumPy NMS), so a model can be
checked without a GPU.
"""

import argparse
import logging
import os
import time

from tqdm import tqdm

from common import UserError, atomic_output, run_cli, setup_logging

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


def open_runner(args):
    if args.onnx:
        from runners import OnnxCpuRunner

        return OnnxCpuRunner(args.onnx)
    raise UserError("give the model with --onnx (TensorRT engines: see README)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--onnx", help="converted ONNX model to run on the CPU (from create_onnx.py)")
    parser.add_argument("-i", "--input", required=True, help="an image file or a folder of .jpg/.jpeg/.png/.bmp")
    parser.add_argument("-o", "--output", required=True, help="folder for the visualizations and result files")
    parser.add_argument("-l", "--labels", default=DEFAULT_LABELS, help="class names, one per line (class 0 first)")
    parser.add_argument("-t", "--nms_threshold", type=float, default=0.0,
                        help="drop detections scoring below this (after the model's own NMS threshold)")
    parser.add_argument("-b", "--batch_size", type=int, default=None,
                        help="images per batch (default: the model's fixed batch, else 1)")
    parser.add_argument("--recursive", action="store_true", help="also read images in subfolders")
    parser.add_argument("--max_images", type=int, default=None, help="stop after this many images")
    parser.add_argument("--no_visualizations", action="store_true", help="write only the .txt results")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from detections import split_batch, write_tsv
    from image_batcher import ImageBatcher, load_rgb
    from visualize import visualize_detections

    labels = read_labels(args.labels)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"{args.output}: exists and is not a folder; --output takes a folder")
    with open_runner(args) as runner:
        spec = runner.input_spec()
        batch_size = args.batch_size or runner.fixed_batch or 1
        if runner.fixed_batch and batch_size != runner.fixed_batch:
            raise UserError(f"{runner.name} has a fixed batch of {runner.fixed_batch}; drop --batch_size or give that")
        batcher = ImageBatcher(args.input, runner.input_hw, runner.input_layout, batch_size, spec.dtype,
                               max_num_images=args.max_images, recursive=args.recursive)
        os.makedirs(args.output, exist_ok=True)
        stems = output_stems(batcher.files, args.input)
        images = detections_total = 0
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
                    images += 1
                    detections_total += len(found)
                progress.update(len(infos))
        elapsed = time.perf_counter() - start
    skipped = f", {len(batcher.skipped)} unreadable skipped" if batcher.skipped else ""
    print(f"{images} images, {detections_total} detections, {images / elapsed:.2f} images/s "
          f"({runner.name}){skipped}; results in {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
