"""Self-check of every ONNX graph this project writes, before it is reported as written.

The graph is loaded in ONNX Runtime and one image is run through it (the NMS
plugin in the NumPy reference, as `infer.py --onnx` runs it). The check fails
when the graph does not load or run, when the four detection outputs do not
have the declared shapes and types, or when the NMS plugin's inputs disagree
in size: boxes and scores must cover the same anchors, as many as the anchor
constant has, and the scores as many classes as the graph says it has.

`write_checked_onnx` writes a model to a temporary file beside its
destination, checks that file and only then renames it into place: a graph
that fails leaves no file behind (and the user's previous file untouched).
"""

import logging

import numpy as np

from common import UserError, write_bytes_atomic

log = logging.getLogger("self_check")

CHECK_SEED = 0
FAILED = ("the written graph failed its self-check and was not kept (a bug of this tool: please report it with "
          "the model's name and input size)")


def _check_image(spec):
    """One deterministic noise image (0-255) in the input's shape and type, batch 1 unless fixed."""
    shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
    values = np.random.default_rng(CHECK_SEED).uniform(0, 255, size=shape)
    return values.astype(spec.dtype)


def _plugin_sizes(runner, raw):
    """Problems with the sizes of the NMS plugin's inputs, as strings (empty when they agree)."""
    op, attrs, _, _ = runner.plugin
    arrays = [np.asarray(array) for array in runner.plugin_inputs(raw)]
    boxes, scores = arrays[0], arrays[1]
    problems = []
    if scores.ndim != 3:
        return [f"{op} scores have shape {scores.shape}, not [N, anchors, classes]"]
    batch, num_anchors, num_classes = scores.shape
    if op == "EfficientNMS_TRT":
        if boxes.shape != (batch, num_anchors, 4):
            problems.append(f"{op} boxes {boxes.shape} do not match scores {scores.shape}")
        if len(arrays) > 2 and arrays[2].shape != (1, num_anchors, 4):
            problems.append(f"{op} anchors {arrays[2].shape} do not match the heads' {num_anchors} anchors")
    else:
        if boxes.shape not in ((batch, num_anchors, 1, 4), (batch, num_anchors, num_classes, 4)):
            problems.append(f"{op} boxes {boxes.shape} do not match scores {scores.shape}")
        if int(attrs.get("numClasses", num_classes)) != num_classes:
            problems.append(f"{op} numClasses {attrs['numClasses']} but the scores have {num_classes} classes")
    return problems


def _output_problems(outputs, batch, declared_classes):
    from runners import OUTPUT_NAMES

    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        return [f"outputs {missing} are missing"]
    count, boxes, scores, classes = (outputs[name] for name in OUTPUT_NAMES)
    problems = []
    detections = boxes.shape[1] if boxes.ndim == 3 else -1
    if count.shape != (batch, 1) or count.dtype != np.int32:
        problems.append(f"num_detections is {count.dtype} {count.shape}, not int32 ({batch}, 1)")
    if boxes.shape != (batch, detections, 4):
        problems.append(f"detection_boxes has shape {boxes.shape}, not ({batch}, D, 4)")
    if scores.shape != (batch, detections) or classes.shape != (batch, detections):
        problems.append(f"detection_scores {scores.shape} and detection_classes {classes.shape} do not match "
                        f"detection_boxes {boxes.shape}")
    if not problems:
        if not (0 <= count.min() and count.max() <= detections):
            problems.append(f"num_detections {count.ravel().tolist()} outside 0..{detections}")
        elif not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            problems.append("detections are not finite")
        elif declared_classes is not None and count.max() > 0 and classes.max() >= declared_classes:
            problems.append(f"class {int(classes.max())} found in a {declared_classes}-class model")
    return problems


def check_onnx(path, shown_as=None):
    """Load `path` in ONNX Runtime, run one image, check what comes out; UserError naming `shown_as` if not."""
    from runners import OnnxCpuRunner

    shown_as = shown_as or path
    runner = OnnxCpuRunner(path)
    try:
        runner.activate()
    except UserError as error:
        raise UserError(f"{shown_as}: {FAILED}: {str(error).split(': ', 1)[-1]}") from None
    declared_classes = int(runner.metadata["num_classes"]) if "num_classes" in runner.metadata else None
    try:
        spec = runner.input_spec()
        image = _check_image(spec)
        try:
            raw = runner.infer_raw({spec.name: image})
            outputs = runner.infer({spec.name: image})
        except Exception as error:  # ONNX Runtime raises its own types
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"{shown_as}: {FAILED}: it does not run in ONNX Runtime ({first})") from None
        problems = _plugin_sizes(runner, raw) if runner.plugin else []
        if runner.plugin and declared_classes is not None and not problems:
            scores = runner.plugin_inputs(raw)[1]
            if scores.shape[2] != declared_classes:
                problems.append(f"the scores have {scores.shape[2]} classes, the metadata says {declared_classes}")
        problems += _output_problems(outputs, image.shape[0], declared_classes)
    finally:
        runner.deactivate()
    if problems:
        raise UserError(f"{shown_as}: {FAILED}: {'; '.join(problems)}")
    log.info("self-check of %s passed (one image, %d detections)", shown_as, int(outputs["num_detections"][0, 0]))


def write_checked_onnx(path, model):
    """Write `model` to `path` atomically, after its self-check passed on the written bytes."""
    write_bytes_atomic(path, model.SerializeToString(), check=lambda written: check_onnx(written, shown_as=path))
