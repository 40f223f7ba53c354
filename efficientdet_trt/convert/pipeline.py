"""The conversion pipeline create_onnx.py runs: a SavedModel to the TensorRT-ready ONNX.

`convert_saved_model` (TensorFlow, tf_to_onnx.py) loads the model and runs
tf2onnx; `build_graph` (ONNX only) finds the family's parts (automl_graph.py,
tfod_graph.py), applies the shared graph surgery (graph_surgery.py) and the
NMS route, and writes the metadata the other scripts read. Before either,
`GraphOptions.check` and `read_export` (the family and exported size, from
saved_model.pb alone) let create_onnx.py refuse bad options in seconds.
"""

import gc
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from efficientdet_trt.core.common import UserError, write_bytes_atomic
from efficientdet_trt.core.metadata import AUTOML_FAMILY, FAMILY_KEY, TFOD_FAMILY

log = logging.getLogger("create_onnx")

MIN_FAST_SCORE_THRESHOLD = 0.01
DEFAULT_IOU_FOR_SOFT_NMS = 0.5


def parse_input_shape(text, input_format=None):
    """'1,512,512,3' / 'N,3,512,512' / '-1,...' -> (batch, height, width, layout); batch 'N' is dynamic."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise UserError(f"--input_shape {text!r}: give four comma-separated numbers such as 1,512,512,3 or N,3,512,512")
    batch = "N" if parts[0] in ("N", "n", "-1") else parts[0]
    try:
        dims = [int(p) for p in parts[1:]]
        batch = batch if batch == "N" else int(batch)
    except ValueError:
        raise UserError(f"--input_shape {text!r}: dimensions must be integers (the batch may be N or -1)") from None
    if batch != "N" and batch < 1 or min(dims) < 1:
        raise UserError(f"--input_shape {text!r}: dimensions must be positive")
    layout = input_format
    if layout is None:
        if 3 not in (dims[0], dims[2]):
            raise UserError(f"--input_shape {text!r}: images need 3 channels, second (NCHW, e.g. 1,3,512,512) or "
                            "last (NHWC, e.g. 1,512,512,3)")
        if dims[2] == 3 and dims[0] != 3:
            layout = "NHWC"
        elif dims[0] == 3 and dims[2] != 3:
            layout = "NCHW"
        else:
            raise UserError(f"--input_shape {text!r} is ambiguous; add --input_format NHWC or NCHW")
    if layout == "NHWC":
        height, width, channels = dims
    else:
        channels, height, width = dims
    if channels != 3:
        place = "last" if layout == "NHWC" else "second"
        raise UserError(f"--input_shape {text!r}: {layout} needs 3 channels in the {place} place")
    return batch, height, width, layout


def parse_input_size(text):
    try:
        height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input_size {text!r}: give H,W such as 512,512") from None
    if min(height, width) < 1:
        raise UserError(f"--input_size {text!r}: dimensions must be positive")
    return height, width


@dataclass(frozen=True)
class GraphOptions:
    """What the final graph should be: create_onnx.py's options of the same names (None: the model's own)."""

    input_shape: Optional[str] = None  # '1,512,512,3', 'N,3,512,512': batch, size and layout
    input_format: Optional[str] = None  # NHWC or NCHW
    input_size: Optional[str] = None  # 'H,W'
    preprocessor: str = "auto"  # normalisation: the model's own, or a preset (graph_surgery.preset_normalization)
    nms_threshold: Optional[float] = None
    iou_threshold: Optional[float] = None
    nms_detections: Optional[int] = None
    legacy_plugins: bool = False  # BatchedNMS_TRT instead of EfficientNMS_TRT
    class_agnostic: bool = False
    onnx_nms: bool = False  # ONNX NonMaxSuppression instead of a plugin
    class_names: Optional[Sequence[str]] = None  # stored in the metadata (labels.py), one per class
    input_dtype: str = "float32"  # or uint8
    clip_to_image: bool = False  # TFOD: the image_size input and the clip window after the NMS

    def check(self, source=None, exported_size=None):
        """Everything that can be checked without converting the model (parses the sizes; with the
        `exported_size` (H, W) of the SavedModel `source`, the size asked for must be it); raises UserError."""
        from efficientdet_trt.convert.graph_surgery import INPUT_DTYPES

        if self.input_shape:
            _, height, width, _ = parse_input_shape(self.input_shape, self.input_format)
            check_exported_size(source, exported_size, (height, width))
        if self.input_size:
            check_exported_size(source, exported_size, parse_input_size(self.input_size))
        if self.legacy_plugins and self.onnx_nms:
            raise UserError("--legacy_plugins and --onnx_nms are two different NMS routes; choose one")
        if self.onnx_nms and self.class_agnostic:
            raise UserError("--class_agnostic is not available with --onnx_nms (per-class NonMaxSuppression)")
        if self.input_dtype not in INPUT_DTYPES:
            raise UserError(f"input dtype {self.input_dtype!r}: choose one of {', '.join(INPUT_DTYPES)}")
        return self


def check_exported_size(source, exported_size, asked):
    """A SavedModel's size is fixed at export (its anchors and reshapes): refuse any other."""
    if exported_size and tuple(asked) != tuple(exported_size):
        raise UserError(f"{source} was exported for {exported_size[0]}x{exported_size[1]} images (its anchors "
                        f"and reshapes are fixed); --input_shape/--input_size asked for {asked[0]}x{asked[1]}. "
                        "Re-export the SavedModel with that image size, or leave the size out")


def read_export(saved_model):
    """(family, exported (H, W)) of a SavedModel, read from its saved_model.pb without loading it, for the checks
    made before the conversion; either is None where it cannot be read so (then the converted graph says)."""
    from efficientdet_trt.convert import automl_graph, tf_to_onnx, tfod_graph

    family, consts = tf_to_onnx.read_family_and_consts(saved_model,
                                                       automl_graph.TF_SIZE_CONSTS + tfod_graph.TF_SIZE_CONSTS)
    if family is None:
        return None, None
    values = [consts.get(name) for name in _family_module(family).TF_SIZE_CONSTS]
    if any(value is None or value.size != 1 for value in values):
        return family, None
    return family, (int(values[0][0]), int(values[1][0]))


def resolve_thresholds(tf_nms, nms_threshold, iou_threshold, nms_detections):
    """Score threshold, IoU threshold and max detections: user overrides, else the model's own."""
    if tf_nms is None and (nms_threshold is None or iou_threshold is None or nms_detections is None):
        raise UserError("the SavedModel has no constant NonMaxSuppression settings; pass --nms_threshold, "
                        "--iou_threshold and --nms_detections")
    for flag, value in (("--nms_threshold", nms_threshold), ("--iou_threshold", iou_threshold)):
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"{flag} must be between 0 and 1 (got {value})")
    score = nms_threshold if nms_threshold is not None else tf_nms.score_threshold
    if not np.isfinite(score) or score < 0:
        log.info("the model's NMS score threshold is %s (unset); using 0", score)
        score = 0.0
    if score < MIN_FAST_SCORE_THRESHOLD:
        log.warning("NMS score threshold %g is below %g: kept as asked (right for mAP), but EfficientNMS "
                    "then sorts many more candidates and runs slower", score, MIN_FAST_SCORE_THRESHOLD)
    if iou_threshold is not None:
        iou = iou_threshold
    elif tf_nms.is_soft:
        iou = DEFAULT_IOU_FOR_SOFT_NMS
        log.warning("the model uses soft (gaussian, sigma %g) NMS, which the TensorRT plugins do not have: "
                    "using hard NMS with IoU %g (set --iou_threshold); detections will differ from "
                    "TensorFlow's", tf_nms.soft_nms_sigma, iou)
    else:
        iou = tf_nms.iou_threshold
    detections = nms_detections if nms_detections is not None else tf_nms.max_output_size
    if detections < 1:
        raise UserError(f"--nms_detections must be at least 1 (got {detections})")
    # TF stores float32 thresholds: 0.2 arrives as 0.20000000298; keep what the user meant.
    return float(f"{score:.6g}"), float(f"{iou:.6g}"), int(detections)


@dataclass
class ConvertedModel:
    """tf2onnx's raw graph plus what the TF graph says about the model."""

    model: object  # onnx.ModelProto
    family: str
    tf_nms: object  # tf_to_onnx.TFNmsConfig or None
    source: str
    max_detections: Optional[int] = None  # the model's own detection count when its NMS op does not carry it


def _family_module(family):
    from efficientdet_trt.convert import automl_graph, tfod_graph

    return {AUTOML_FAMILY: automl_graph, TFOD_FAMILY: tfod_graph}[family]


def convert_saved_model(saved_model, tf2onnx_path=None, opset=13, full_graph=False):
    """Stage 1 (TensorFlow): load the SavedModel and run tf2onnx.

    By default only what the graph surgery keeps is converted: the heads and
    what feeds them, up to the family's own box decoder or raw outputs
    (automl_graph.tf_outputs, tfod_graph.tf_outputs); the model's own NMS
    settings are read from the whole graph first. `full_graph` converts the
    whole serving signature, post-processing included (slower; the old path).
    """
    from efficientdet_trt.convert import tf_to_onnx

    def read_model(graph_def):
        family = tf_to_onnx.detect_family(graph_def, saved_model)
        return family, tf_to_onnx.read_nms_config(graph_def), _family_module(family).tf_max_detections(graph_def)

    if full_graph:
        graph_def, inputs, outputs = tf_to_onnx.load_frozen_graph(saved_model)
        family, tf_nms, max_detections = read_model(graph_def)
    else:
        with tf_to_onnx.ServingGraph(saved_model) as serving:
            family, tf_nms, max_detections = read_model(serving.graph_def)
            outputs = _family_module(family).tf_outputs(serving.graph_def, serving.outputs)
            graph_def, inputs = serving.frozen(outputs), serving.inputs
        gc.collect()  # TensorFlow's copy of the whole graph goes before tf2onnx needs the memory
    model = tf_to_onnx.convert_to_onnx(graph_def, inputs, outputs, opset, copy_per_pass=full_graph)
    if tf2onnx_path:
        write_bytes_atomic(tf2onnx_path, model.SerializeToString())
        log.info("wrote the raw tf2onnx graph to %s", tf2onnx_path)
    return ConvertedModel(model, family, tf_nms, saved_model, max_detections)


def build_graph(converted, options=GraphOptions()):
    """Stage 2 (ONNX only): graph surgery on a converted model as `options` (a GraphOptions) ask; returns the
    final onnx.ModelProto.

    options.clip_to_image (TFOD graphs) adds the second input `image_size` and TFOD's clip window after the NMS
    (graph_surgery.add_image_window).
    """
    from efficientdet_trt.convert import graph_surgery as surgery
    from efficientdet_trt.convert.graph_surgery import gs
    from efficientdet_trt.core import labels

    options.check()
    input_shape, input_format, input_size = options.input_shape, options.input_format, options.input_size
    onnx_nms, legacy_plugins, clip_to_image = options.onnx_nms, options.legacy_plugins, options.clip_to_image
    class_names = options.class_names
    family = converted.family
    if clip_to_image and family != TFOD_FAMILY:
        raise UserError(f"{converted.source}: --clip_to_image is for TF2 Object Detection API graphs (their "
                        "post-processing clips to each image); this is an AutoML one")
    graph = gs.import_onnx(converted.model)
    parts = _family_module(family).recognise(graph)
    native_size = parts.native_size

    if input_shape:
        batch, height, width, layout = parse_input_shape(input_shape, input_format)
    else:
        layout = input_format or "NHWC"
        batch = "N"
        if input_size:
            height, width = parse_input_size(input_size)
        elif native_size:
            height, width = native_size
        else:
            raise UserError("cannot read the model's input size from the graph; pass --input_size H,W")
    check_exported_size(converted.source, native_size, (height, width))

    if options.preprocessor == "auto":
        normalization = parts.normalization
        if normalization is None:
            log.warning("could not read the model's normalisation constants; using imagenet (set --preprocessor)")
            normalization = surgery.preset_normalization("imagenet")
    else:
        normalization = surgery.preset_normalization(options.preprocessor)

    num_classes = parts.num_classes
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(f"--labels has {len(class_names)} class names but {converted.source} has {num_classes} "
                        "classes; give one name per class, class 0 first")

    analysis_shape = [1, height, width, 3] if layout == "NHWC" else [1, 3, height, width]
    surgery.replace_input(graph, parts.stem, analysis_shape, layout, normalization, options.input_dtype)

    nms_detections = options.nms_detections
    if nms_detections is None and converted.max_detections:
        nms_detections = converted.max_detections
    score, iou, detections = resolve_thresholds(converted.tf_nms, options.nms_threshold, options.iou_threshold,
                                                nms_detections)
    kept = detections * surgery.CLIP_CANDIDATES if clip_to_image else detections  # what the NMS keeps
    anchors = parts.anchors(height, width)
    boxes = surgery.scale_box_encodings(graph, parts.box_head, parts.box_scales)
    scores = parts.class_head
    if parts.drops_boxes_outside and not clip_to_image:  # the window drops them after the NMS, as TFOD does
        scores = surgery.drop_boxes_outside(graph, boxes, scores, anchors, height, width)
    if onnx_nms:
        # The NMS ops go in after constant folding (their shapes follow the batch); until then the
        # heads are the outputs.
        graph.outputs = [boxes, scores]
        for tensor in graph.outputs:
            tensor.dtype = np.float32
    elif legacy_plugins:
        decoded = parts.decoded_boxes
        if decoded is None:
            decoded = surgery.add_box_decoder(graph, boxes, anchors)
        surgery.add_batched_nms(graph, decoded, scores, num_classes, kept, score, iou)
    else:
        surgery.add_efficient_nms(graph, boxes, scores, anchors, num_classes, kept, score, iou,
                                  options.class_agnostic)
    surgery.cleanup(graph)
    graph = surgery.fold_constants(graph)
    surgery.make_resizes_exact(graph)
    surgery.make_reshapes_batch_agnostic(graph, 1)
    surgery.set_batch_dim(graph, batch)
    if onnx_nms:
        boxes, scores = graph.outputs
        surgery.add_onnx_nms(graph, boxes, scores, anchors, num_classes, kept, score, iou)
        surgery.set_batch_dim(graph, batch)
    if clip_to_image:
        surgery.add_image_window(graph, detections)
        surgery.set_batch_dim(graph, batch)
    surgery.cleanup(graph)
    graph.name = f"efficientdet-{family}"
    model = gs.export_onnx(graph)
    metadata = {
        FAMILY_KEY: family,
        "input_layout": layout,
        "box_format": "ymin,xmin,ymax,xmax;input_pixels",
        "num_classes": str(num_classes),
        "normalization": normalization.source,
    }
    if clip_to_image:
        metadata["clip_window_input"] = surgery.WINDOW_INPUT
    if class_names is not None:
        metadata[labels.METADATA_KEY] = labels.to_metadata(class_names)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    log.info("final graph: %d nodes, input %s %s, batch %s", len(model.graph.node), options.input_dtype,
             analysis_shape[1:], batch)
    return model
