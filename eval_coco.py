#!/usr/bin/env python3
"""Measure COCO mAP of an EfficientDet TensorRT engine, or of its ONNX on the CPU.

Runs the model over the image folder, maps each image to its annotation by
file name, and evaluates with pycocotools (bbox): prints the standard 12-number
summary and a per-class AP table, and writes the results JSON and a
precision-recall plot when asked. No AutoML checkout is needed.
"""

import json
import logging
import os
import time

from tqdm import tqdm

from efficientdet_trt.core.common import (
    ArgumentParser,
    UserError,
    atomic_output,
    check_output_file,
    positive_int,
    run_cli,
    setup_logging,
    unit_interval,
)
from efficientdet_trt.engine.gpu_preprocess import add_device_argument
from image_batcher import add_preprocessing_argument

log = logging.getLogger("eval_coco")

MAP_SENSITIVE_THRESHOLD = 0.01


def model_score_threshold(runner):
    """The NMS score threshold built into an ONNX graph (None when it cannot be read)."""
    plugin = getattr(runner, "plugin", None)
    if not plugin:
        return None
    attrs = plugin.attrs
    value = attrs.get("score_threshold", attrs.get("scoreThreshold"))
    return None if value is None else float(value)


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("-e", "--engine", help="TensorRT engine to evaluate")
    parser.add_argument("--onnx", help="converted ONNX model to evaluate on the CPU instead")
    parser.add_argument("-i", "--input", required=True, help="folder of the evaluation images (e.g. val2017)")
    parser.add_argument("-a", "--annotations", required=True, help="COCO instances JSON (e.g. instances_val2017.json)")
    parser.add_argument("-p", "--automl_path", help="accepted for compatibility with NVIDIA's sample; not needed")
    parser.add_argument("-l", "--labels", help="class names in model order, matched by name to the annotations' "
                        "categories (default: COCO convention, category id = class + 1)")
    parser.add_argument("-t", "--nms_threshold", type=unit_interval, default=0.0,
                        help="drop detections scoring below this")
    parser.add_argument("--results", help="write the COCO results JSON here (the PR plot goes beside it)")
    parser.add_argument("--plot", help="precision-recall plot PNG (default: beside --results)")
    parser.add_argument("--max_images", type=positive_int, default=None, help="evaluate only the first N images")
    parser.add_argument("-b", "--batch_size", type=positive_int, default=None,
                        help="images per batch (default: model's, else 1)")
    parser.add_argument("--workers", type=positive_int, default=None, help="image decoding threads")
    add_preprocessing_argument(parser)
    add_device_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from efficientdet_trt.core.labels import check_label_count, from_metadata, read_labels
    from efficientdet_trt.engine import gpu_preprocess
    from efficientdet_trt.evaluate import coco
    from efficientdet_trt.run.detections import coco_results, split_batch
    from efficientdet_trt.run.open_model import check_model_arguments, open_runner
    from image_batcher import Preprocessing, check_input_path

    if args.automl_path:
        log.info("--automl_path is not needed: evaluating with pycocotools")
    check_model_arguments(args.engine, args.onnx)
    check_input_path(args.input)
    plot = args.plot or (os.path.splitext(args.results)[0] + "_pr.png" if args.results else None)
    inputs = {"--input": args.input, "--annotations": args.annotations, "--engine": args.engine,
              "--onnx": args.onnx, "--labels": args.labels}
    if args.results:
        check_output_file(args.results, "--results", inputs)
    if plot:
        check_output_file(plot, "--plot", inputs)
    ground_truth = coco.load_annotations(args.annotations)
    ids_by_name = {image["file_name"]: image["id"] for image in ground_truth.dataset["images"]}
    given_labels = read_labels(args.labels) if args.labels else None
    categories = coco.category_map(ground_truth, given_labels)

    with open_runner(args.engine, args.onnx, verbose=args.verbose) as runner:
        check_label_count(given_labels, runner.metadata, args.labels, args.engine or args.onnx)
        if categories is None:
            coco.warn_if_names_differ(ground_truth, from_metadata(runner.metadata))
        threshold = model_score_threshold(runner)
        if threshold is not None and threshold > MAP_SENSITIVE_THRESHOLD:
            log.warning("the model's NMS score threshold is %g: mAP drops when boxes below it are discarded; "
                        "re-create the ONNX with --nms_threshold 0 (or 0.001) for a faithful mAP", threshold)
        batch_size = args.batch_size or runner.fixed_batch or 1
        preprocessing = Preprocessing.for_runner(args.preprocessing, runner)
        batcher, engine = gpu_preprocess.batcher_for(runner, args.preprocess_on, preprocessing, args.input,
                                                     batch_size, max_num_images=args.max_images,
                                                     workers=args.workers)
        unknown = [p for p in batcher.files if os.path.basename(p) not in ids_by_name]
        if unknown:
            log.warning("%d image(s) are not in %s and are skipped: %s", len(unknown), args.annotations,
                        coco.first_few(os.path.basename(p) for p in unknown))
            batcher.files = [p for p in batcher.files if os.path.basename(p) in ids_by_name]
        if not batcher.files:
            raise UserError(f"{args.input}: none of its images are named in {args.annotations}")
        annotated = {a["image_id"] for a in ground_truth.dataset["annotations"]}
        if not annotated & {ids_by_name[os.path.basename(p)] for p in batcher.files}:
            raise UserError(f"{args.annotations}: none of its annotations belong to the images found in "
                            f"{args.input} (their image_id values match no image entry named like those files); "
                            "check that the annotations are for these images")
        results, evaluated = [], []
        start = time.perf_counter()
        with tqdm(total=len(batcher.files), unit="img", desc="eval", disable=None) as progress:
            for batch, infos in batcher:
                outputs = engine.infer_device(infos) if engine else runner.infer(runner.feed(batch, infos))
                for info, found in zip(infos, split_batch(outputs, infos, args.nms_threshold)):
                    image_id = ids_by_name[os.path.basename(info.path)]
                    evaluated.append(image_id)
                    entries = coco_results(found, image_id, categories)
                    results += [e for e in entries if e["category_id"] is not None]
                progress.update(len(infos))
        elapsed = time.perf_counter() - start
    if not evaluated:
        raise UserError(f"{args.input}: none of the images could be read (see the warnings above); nothing was "
                        "evaluated")
    missing = sorted(set(ids_by_name.values()) - set(evaluated))
    if missing:
        names = {image_id: name for name, image_id in ids_by_name.items()}
        log.warning("%d annotated image(s) were not evaluated (not in %s, unreadable, or past --max_images): %s",
                    len(missing), args.input, coco.first_few(names[i] for i in missing))
    coco.warn_unpredicted_categories(ground_truth, results, evaluated)

    if args.results:
        with atomic_output(args.results, "w") as handle:
            json.dump(results, handle)
    evaluator = coco.evaluate(ground_truth, results, evaluated)
    if plot:
        coco.plot_precision_recall(evaluator, plot, f"{runner.name} on {len(evaluated)} images")
    shown = "unknown" if threshold is None else f"{threshold:g}"
    print(f"COCO bbox evaluation ({coco.evaluation_backend()}): {len(evaluated)} images, {len(results)} "
          f"detections, model NMS score threshold {shown}, post-filter {args.nms_threshold:g}, "
          f"{len(evaluated) / elapsed:.1f} images/s")
    print(coco.format_summary(evaluator))
    print("per-class AP:")
    print(coco.format_class_table(coco.per_class_ap(evaluator)))
    if plot:
        print(f"precision-recall plot: {plot}")
    return 0


if __name__ == "__main__":
    run_cli(main)
