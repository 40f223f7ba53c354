#!/usr/bin/env python3
"""Compare an EfficientDet engine (or its ONNX on the CPU) with the TensorFlow SavedModel it came from.

By default both models are fed the same pixels (the model-size canvases
ImageBatcher makes), so what is measured is the conversion alone; with
--tf_input raw TensorFlow gets the decoded image and resizes and pads it with
its own graph, so our preprocessing (--preprocessing) is measured too. Prints
the share of TensorFlow's detections that ours matches (same class, IoU at least
--match_iou), their mean IoU and largest score difference, the COCO AP of ours
scored against TensorFlow's detections as ground truth and, for an ONNX graph,
the largest difference of the pre-NMS heads. Writes side-by-side
visualizations (TensorFlow | ours | ground truth when --annotations is given).
--layers compares the two graphs tensor by tensor instead (layer_compare.py).
"""

import contextlib
import io
import logging
import os

import numpy as np
from tqdm import tqdm

from efficientdet_trt.core.common import (
    ArgumentParser,
    UserError,
    atomic_output,
    check_not_an_input,
    check_output_folder,
    positive_int,
    prepare_output_folder,
    run_cli,
    setup_logging,
    unit_interval,
)
from image_batcher import add_preprocessing_argument

log = logging.getLogger("compare_tf")


def reference_as_coco(per_image, sizes):
    """TF's detections as a COCO ground-truth data set (category = class + 1)."""
    from pycocotools.coco import COCO

    images, annotations, categories = [], [], set()
    for image_id, (found, (width, height)) in enumerate(zip(per_image, sizes), start=1):
        images.append({"id": image_id, "width": width, "height": height, "file_name": str(image_id)})
        for (x1, y1, x2, y2), cls in zip(found.boxes.tolist(), found.classes.tolist()):
            categories.add(cls + 1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": str(c)} for c in sorted(categories)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def compare_layers(args):
    """--layers: TensorFlow and ONNX Runtime tensor by tensor on the first image."""
    from efficientdet_trt.evaluate import layer_compare
    from efficientdet_trt.run.onnx_runner import OnnxCpuRunner
    from efficientdet_trt.run.tf_runner import TFSavedModelRunner
    from image_batcher import ImageBatcher, Preprocessing

    with OnnxCpuRunner(args.onnx, layout_optimizations=False) as ours, \
            TFSavedModelRunner(args.saved_model, ours.input_hw) as tf_runner:
        if tf_runner.is_tfod:
            raise UserError(f"{args.saved_model}: --layers needs an AutoML SavedModel; a TF2 Object Detection API "
                            "export keeps its tensors inside TensorFlow functions, out of reach by name")
        batcher = ImageBatcher(args.input, ours.input_hw, "NHWC", 1, max_num_images=1,
                               preprocessing=Preprocessing.for_runner(args.preprocessing, ours))
        batch, infos = next(iter(batcher))
        image = np.clip(np.rint(batch[0]), 0, 255).astype(np.uint8)  # the pixels TFSavedModelRunner feeds
        rows = layer_compare.compare_layers(args.onnx, tf_runner, image, ours.input_layout)
    print(f"{infos[0].path}:")
    for line in layer_compare.report(rows, args.layer_tolerance):
        print(line)
    return 0


TFOD_HEADS = ["decoded boxes (pixels)", "scores (sigmoid)"]


def tfod_head_deltas(plugin_arrays, row, tf_heads):
    """Max |ours - TF| of a TFOD model's decoded boxes and sigmoid scores, over the anchors the graph keeps
    (those whose box lies entirely outside the input are dropped before NMS, as TFOD drops them after)."""
    from efficientdet_trt.run import nms_reference

    boxes, logits, anchors = plugin_arrays
    tf_boxes, tf_scores = tf_heads
    kept = logits[row, :, 0] > -1e3
    decoded = nms_reference.decode_center_size(boxes[row], anchors[0])
    return [float(np.abs(decoded[kept] - tf_boxes[kept]).max()),
            float(np.abs(nms_reference.sigmoid(logits[row][kept]) - tf_scores[kept]).max())]


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("-m", "--saved_model", required=True, help="the TensorFlow SavedModel the model came from")
    parser.add_argument("-e", "--engine", help="TensorRT engine to compare")
    parser.add_argument("--onnx", help="converted ONNX to compare on the CPU instead")
    parser.add_argument("-i", "--input", required=True, help="an image or a folder of images")
    parser.add_argument("-o", "--output", help="folder for side-by-side visualizations (default: none)")
    parser.add_argument("-a", "--annotations", help="COCO annotations: adds a ground-truth panel")
    parser.add_argument("-l", "--labels", default=None, help="class names for the drawings (default: the names "
                        "stored in the model, else COCO's for 90 classes, else class_<n>)")
    parser.add_argument("-t", "--nms_threshold", type=unit_interval, default=0.0, help="drop detections below this "
                        "score on both sides")
    parser.add_argument("--match_iou", type=unit_interval, default=0.5, help="IoU a match needs (same class as well)")
    parser.add_argument("--max_images", type=positive_int, default=None, help="compare only the first N images")
    parser.add_argument("--tf_input", choices=["canvas", "raw"], default="canvas",
                        help="what TensorFlow is fed: canvas, the model-size pixels ours gets (measures the "
                        "conversion alone); raw, the decoded image, resized and padded by TensorFlow's own graph "
                        "(measures our --preprocessing too)")
    add_preprocessing_argument(parser)
    parser.add_argument("--layers", action="store_true", help="instead of detections, compare every tensor the "
                        "two graphs share (tf2onnx keeps TensorFlow's names) on the first image, in graph order, "
                        "and name the first one that differs by more than --layer_tolerance (needs --onnx)")
    parser.add_argument("--layer_tolerance", type=float, default=1e-3,
                        help="with --layers: relative difference (max |delta| / max |TF|) reported as growing")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.layers and not args.onnx:
        raise UserError("--layers compares the ONNX graph's tensors with TensorFlow's: give --onnx")
    from efficientdet_trt.convert.tf_to_onnx import check_saved_model_path
    from image_batcher import check_input_path

    check_saved_model_path(args.saved_model)  # the inputs first: loading the models takes seconds
    check_input_path(args.input)
    if args.layers:
        return compare_layers(args)

    from efficientdet_trt.core.common import check_separate_folders
    from efficientdet_trt.core.labels import check_label_count, model_labels, read_labels
    from efficientdet_trt.evaluate import coco
    from efficientdet_trt.run.detections import Detections, coco_results, match_detections, split_batch
    from efficientdet_trt.run.open_model import check_model_arguments, open_runner
    from efficientdet_trt.run.tf_runner import TFSavedModelRunner
    from image_batcher import ImageBatcher, ImageInfo, Preprocessing, load_rgb
    from visualize import concat_visualizations, visualize_detections

    check_model_arguments(args.engine, args.onnx)
    given_labels = read_labels(args.labels) if args.labels else None
    if args.output:
        check_separate_folders(args.input, args.output)
        check_not_an_input(args.output, "--output", {"--saved_model": args.saved_model, "--input": args.input,
                                                     "--annotations": args.annotations, "--engine": args.engine,
                                                     "--onnx": args.onnx, "--labels": args.labels})
        check_output_folder(args.output, "--output")
    truth = {}
    if args.annotations:
        gt = coco.load_annotations(args.annotations)
        for image in gt.dataset["images"]:
            anns = gt.loadAnns(gt.getAnnIds(imgIds=[image["id"]], iscrowd=None))
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns]).reshape(-1, 4)
            truth[image["file_name"]] = Detections(boxes, np.ones(len(anns)),
                                                   np.array([a["category_id"] - 1 for a in anns], np.int64))

    ours_all, tf_all, sizes = [], [], []
    # ONNX Runtime without its layout optimizations: their summation order alone puts the heads
    # up to 17x further from TensorFlow's (onnx_runner.cpu_session_options).
    with open_runner(args.engine, args.onnx, verbose=args.verbose, layout_optimizations=False) as ours, \
            TFSavedModelRunner(args.saved_model, ours.input_hw) as tf_runner:
        spec = ours.input_spec()
        check_label_count(given_labels, ours.metadata, args.labels, args.engine or args.onnx)
        labels = model_labels(ours.metadata, given_labels)
        batcher = ImageBatcher(args.input, ours.input_hw, ours.input_layout, ours.fixed_batch or 1, spec.dtype,
                               max_num_images=args.max_images,
                               preprocessing=Preprocessing.for_runner(args.preprocessing, ours))
        # The pre-NMS heads when ONNX Runtime runs the graph up to a plugin: for AutoML the plugin's
        # inputs by TensorFlow's tensor names; TFOD's are inside its functions, so there its decoded
        # boxes and sigmoid scores (what its post-processing consumes) are compared instead.
        plugin = getattr(ours, "plugin", None)
        heads = [item for item in plugin.inputs if isinstance(item, str)] if plugin else []
        if heads and tf_runner.is_tfod:
            heads = TFOD_HEADS
        head_deltas = [0.0] * len(heads)
        if args.output:
            prepare_output_folder(args.output, "--output")  # created once the models loaded
        with tqdm(total=len(batcher.files), unit="img", desc="compare", disable=None) as progress:
            for batch, infos in batcher:
                if args.tf_input == "canvas":
                    batch = np.clip(np.rint(batch), 0, 255).astype(batch.dtype)  # TensorFlow takes uint8
                feed = ours.feed(batch, infos)
                raw = ours.infer_raw(feed) if heads else None
                mine = split_batch(ours.apply_plugin(raw, feed) if heads else ours.infer(feed), infos,
                                   args.nms_threshold)
                for row, (info, found) in enumerate(zip(infos, mine)):
                    if args.tf_input == "raw":
                        image = np.asarray(load_rgb(info.path)[0])
                        tf_info = ImageInfo(info.path, info.width, info.height, 1.0, 1.0)  # TF maps boxes back
                    else:
                        canvas = batch[row] if ours.input_layout == "NHWC" else batch[row].transpose(1, 2, 0)
                        image, tf_info = canvas.astype(np.uint8), info
                    rows, tf_heads = tf_runner.run_image(image, [] if tf_runner.is_tfod else heads)
                    theirs = split_batch(tf_runner.as_outputs([rows]), [tf_info], args.nms_threshold)[0]
                    if heads and tf_runner.is_tfod:
                        deltas = tfod_head_deltas(ours.plugin_inputs(raw), row, tf_runner.raw_heads(image))
                    else:
                        deltas = [float(np.abs(raw[name][row] - value[0]).max())
                                  for name, value in zip(heads, tf_heads)]
                    head_deltas = [max(a, b) for a, b in zip(head_deltas, deltas)]
                    ours_all.append(found)
                    tf_all.append(theirs)
                    sizes.append((info.width, info.height))
                    if args.output:
                        original = load_rgb(info.path)[0]
                        panels = [visualize_detections(original, theirs.boxes, theirs.scores, theirs.classes, labels),
                                  visualize_detections(original, found.boxes, found.scores, found.classes, labels)]
                        titles = ["TensorFlow", ours.name]
                        name = os.path.basename(info.path)
                        if name in truth:
                            t = truth[name]
                            panels.append(visualize_detections(original, t.boxes, t.scores, t.classes, labels))
                            titles.append("ground truth")
                        stem = os.path.join(args.output, os.path.splitext(name)[0] + "_compare.png")
                        with atomic_output(stem) as handle:
                            concat_visualizations(panels, titles).save(handle, format="PNG")
                    progress.update(1)

    matched = total = 0
    ious, deltas = [], []
    for theirs, found in zip(tf_all, ours_all):
        matches, match_ious = match_detections(theirs, found, args.match_iou)
        hit = matches >= 0
        matched += int(hit.sum())
        total += len(theirs)
        ious += match_ious[hit].tolist()
        deltas += np.abs(np.asarray(found.scores)[matches[hit]] - np.asarray(theirs.scores)[hit]).tolist()
    results = []
    for image_id, found in enumerate(ours_all, start=1):
        results += coco_results(found, image_id)
    reference = reference_as_coco(tf_all, sizes)
    evaluator = coco.evaluate(reference, results, list(range(1, len(ours_all) + 1))) if total else None
    rate = matched / total if total else 1.0
    print(f"{len(ours_all)} images; TensorFlow {total} detections, {ours.name} "
          f"{sum(len(f) for f in ours_all)} detections")
    print(f"matched: {matched}/{total} ({rate * 100:.2f}%) of TensorFlow's detections "
          f"(same class, IoU >= {args.match_iou:g})")
    if ious:
        print(f"mean IoU of matched: {np.mean(ious):.4f}; max |score difference|: {np.max(deltas):.2e}")
    if heads:
        print("pre-NMS heads, max |ONNX - TensorFlow|: " + ", ".join(
            f"{name} {delta:.2e}" for name, delta in zip(heads, head_deltas)))
    if evaluator is not None:
        print(f"AP of ours against TensorFlow as ground truth: AP@[.5:.95] {evaluator.stats[0]:.4f}, "
              f"AP50 {evaluator.stats[1]:.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
