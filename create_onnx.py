#!/usr/bin/env python3
"""Convert an EfficientDet TensorFlow SavedModel (AutoML, or TF2 Object Detection API) into a TensorRT-ready ONNX.

The graph takes RGB images in 0-255 named `input` (float32, or uint8 with
--input_dtype uint8), normalises them as the model expects, and ends in
TensorRT's EfficientNMS_TRT plugin (or BatchedNMS_TRT with --legacy_plugins)
with outputs num_detections [N,1] int32, detection_boxes
[N,D,4] (ymin, xmin, ymax, xmax in input pixels), detection_scores [N,D] and
detection_classes [N,D] int32 (0-based). The written graph is checked
before it is kept: ONNX Runtime loads it and runs one image through it
(self_check.py). Check it on your images with `infer.py --onnx`, then build
an engine with build_engine.py.
"""

import dataclasses
import logging
import os
import time

from efficientdet_trt.convert.pipeline import GraphOptions, build_graph, convert_saved_model, read_export
from efficientdet_trt.convert.self_check import write_checked_onnx
from efficientdet_trt.core.common import (
    ArgumentParser,
    UserError,
    check_output_file,
    positive_int,
    run_cli,
    setup_logging,
    unit_interval,
)

log = logging.getLogger("create_onnx")

def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("-m", "--saved_model", required=True, help="the TensorFlow SavedModel folder to convert")
    parser.add_argument("-o", "--onnx", required=True, help="the ONNX file to write")
    parser.add_argument("--input_shape", help="input shape with batch, e.g. 1,512,512,3 (NHWC) or N,3,512,512 "
                        "(NCHW); a batch of N or -1 makes it dynamic. Default: dynamic batch, the model's own "
                        "size, --input_format layout")
    parser.add_argument("-f", "--input_format", choices=["NHWC", "NCHW"], default=None,
                        help="input layout (default: from --input_shape, else NHWC)")
    parser.add_argument("-i", "--input_size", help="H,W of the input (default: the size the model was exported for)")
    parser.add_argument("--input_dtype", choices=["float32", "uint8"], default="float32",
                        help="type of the input images: uint8 RGB is cast to float inside the graph (4x less to "
                        "copy to the GPU or send to a server)")
    parser.add_argument("-p", "--preprocessor", default="auto", choices=["auto", "imagenet", "scale_range"],
                        help="input normalisation: auto reads the model's own mean/std; imagenet; scale_range "
                        "(x*2/255-1, AdvProp models)")
    parser.add_argument("-t", "--nms_threshold", type=unit_interval, help="NMS score threshold, 0-1 (default: the "
                        "model's own; 0 keeps every box, as mAP evaluation wants)")
    parser.add_argument("--iou_threshold", type=unit_interval, help="NMS IoU threshold, 0-1 (default: the model's "
                        "own; 0.5 for soft-NMS models)")
    parser.add_argument("-d", "--nms_detections", type=positive_int, help="max detections per image (default: the "
                        "model's own)")
    parser.add_argument("--class_agnostic", action="store_true", help="one NMS over all classes (reproduces "
                        "AutoML's own global hard NMS) instead of per-class NMS")
    parser.add_argument("--legacy_plugins", action="store_true", help="use BatchedNMS_TRT (TensorRT < 8) "
                        "instead of EfficientNMS_TRT")
    parser.add_argument("--onnx_nms", action="store_true", help="end in the standard ONNX NonMaxSuppression op "
                        "(plus the ops that make the same four outputs) instead of a TensorRT plugin: for TensorRT "
                        "without EfficientNMS_TRT, or plain ONNX Runtime")
    parser.add_argument("--clip_to_image", action="store_true", help="TF2 Object Detection API models: add a second "
                        "input, image_size (each image's height and width in model pixels, the part of the input "
                        "that is not padding), and do what TFOD's post-processing does with it: clip the NMS "
                        "results to the image, drop those left without area, keep the best. Detections then equal "
                        "TensorFlow's on photos of any shape; infer.py and eval_coco.py feed it")
    parser.add_argument("-l", "--labels", help="class names, one per line (class 0 first), stored in the ONNX so "
                        "infer.py, eval_coco.py and compare_tf.py label detections with them")
    parser.add_argument("--opset", type=int, default=13, choices=range(11, 19), metavar="{11..18}",
                        help="ONNX opset for tf2onnx")
    parser.add_argument("--full_graph", action="store_true", help="convert the whole serving graph, TensorFlow's "
                        "post-processing included, before cutting it (slower and larger in memory; the earlier "
                        "path, for comparison)")
    parser.add_argument("--tf2onnx", metavar="PATH", help="also write the raw tf2onnx graph here (for debugging)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    start = time.perf_counter()
    # Everything that can be checked without the model, before TensorFlow spends 30 s or more on it.
    from efficientdet_trt.convert.tf_to_onnx import check_saved_model_path
    from efficientdet_trt.core import labels
    from efficientdet_trt.core.metadata import TFOD_FAMILY

    check_saved_model_path(args.saved_model)
    options = GraphOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(GraphOptions)
                              if field.name != "class_names"}).check()
    if args.labels:
        options = dataclasses.replace(options, class_names=labels.read_labels(args.labels))
    inputs = {"--saved_model": args.saved_model, "--labels": args.labels}
    check_output_file(args.onnx, "--onnx", inputs)
    if args.tf2onnx:
        check_output_file(args.tf2onnx, "--tf2onnx", inputs)
    if os.path.realpath(args.onnx) == os.path.realpath(args.tf2onnx or ""):
        raise UserError(f"{args.onnx}: --onnx and --tf2onnx name the same file; give them different names")
    if args.clip_to_image or args.input_shape or args.input_size:  # what saved_model.pb says (about 2 s)
        family, exported_size = read_export(args.saved_model)
        if args.clip_to_image and family not in (TFOD_FAMILY, None):
            raise UserError(f"{args.saved_model}: --clip_to_image is for TF2 Object Detection API models (their "
                            "post-processing clips to each image); this is an AutoML one")
        options.check(args.saved_model, exported_size)
    converted = convert_saved_model(args.saved_model, args.tf2onnx, args.opset, args.full_graph)
    model = build_graph(converted, options)
    write_checked_onnx(args.onnx, model)
    log.info("wrote %s in %.1f s", args.onnx, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    run_cli(main)
