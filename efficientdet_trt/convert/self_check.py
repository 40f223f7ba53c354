"""Self-check of every ONNX graph this project writes, before it is reported as written.

The graph is loaded in ONNX Runtime and one image is run through it (the NMS
plugin in the NumPy reference, as `infer.py --onnx` runs it). The check image
is a deterministic synthetic scene (smooth background, flat-coloured shapes),
close enough to a photo that models' arithmetic stays in its usual range.

The check refuses only what would be this tool's fault: the graph does not
load or run, the four detection outputs do not have the declared shapes and
types, a count or class is out of range, or the NMS plugin's inputs disagree
in size (boxes and scores must cover the same anchors, as many as the anchor
constant has, and the scores as many classes as the graph says it has).
What the model's own float32 arithmetic does on the image (a box regression
whose exp() overflows to an infinite box, as TensorRT's plugin computes it
too) is one warning line; the graph is kept, and the scripts clip boxes to
the image as always.

`write_checked_onnx` writes a model to a temporary file beside its
destination, checks that file and only then renames it into place: a graph
that fails leaves no file behind (and the user's previous file untouched).
"""

import logging

import numpy as np

from efficientdet_trt.core.common import UserError, write_bytes_atomic

log = logging.getLogger("self_check")

CHECK_SEED = 0
FAILED = ("the written graph failed its self-check and was not kept (a bug of this tool: please report it with "
          "the model's name and input size)")


def check_scene(height, width):
    """A deterministic synthetic scene, [height, width, 3] float32 in 0-255: a sky-to-ground gradient
    with mild texture and four flat-coloured shapes (two rectangles, two discs) at fixed places."""
    rng = np.random.default_rng(CHECK_SEED)
    y = (np.arange(height, dtype=np.float32) + 0.5)[:, None] / height
    x = (np.arange(width, dtype=np.float32) + 0.5)[None, :] / width
    sky, ground = np.array([150, 180, 215], np.float32), np.array([95, 110, 70], np.float32)
    scene = np.where((y < 0.55)[..., None], sky + (y * 40)[..., None], ground - (y * 30)[..., None])
    scene = np.broadcast_to(scene, (height, width, 3)) + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    shapes = [("box", (0.60, 0.10, 0.95, 0.35), (180, 40, 40)), ("box", (0.35, 0.55, 0.80, 0.90), (60, 60, 70)),
              ("disc", (0.25, 0.30, 0.12, 0.0), (240, 210, 60)), ("disc", (0.70, 0.50, 0.10, 0.0), (30, 90, 160))]
    for kind, (a, b, c, d), colour in shapes:
        if kind == "box":
            inside = (y >= a) & (y < c) & (x >= b) & (x < d)
        else:  # centre (a, b), radius c in units of the shorter side
            scale = min(height, width)
            inside = ((y - a) * height) ** 2 + ((x - b) * width) ** 2 < (c * scale) ** 2
        scene = np.where(inside[..., None], np.asarray(colour, np.float32), scene)
    return np.clip(scene, 0, 255).astype(np.float32)


def _check_image(spec):
    """The check scene in the input's layout, shape and type (batch 1 unless fixed)."""
    from efficientdet_trt.run.runner import image_layout

    shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
    layout, (height, width) = image_layout(shape, "the graph")
    scene = check_scene(height, width)
    if layout == "NCHW":
        scene = scene.transpose(2, 0, 1)
    values = np.broadcast_to(scene, shape)
    if np.issubdtype(spec.dtype, np.integer):
        values = np.rint(values)
    return np.ascontiguousarray(values).astype(spec.dtype)


def _plugin_sizes(runner, raw):
    """Problems with the sizes of the NMS plugin's inputs, as strings (empty when they agree)."""
    op, attrs = runner.plugin.op, runner.plugin.attrs
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
    """Problems with the detection outputs that would be this tool's fault, as strings."""
    from efficientdet_trt.run.runner import OUTPUT_NAMES

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
        elif declared_classes is not None and count.max() > 0 and classes.max() >= declared_classes:
            problems.append(f"class {int(classes.max())} found in a {declared_classes}-class model")
    return problems


def _arithmetic_note(outputs):
    """One line on what the model's float32 arithmetic gave on the check image, or None when all is finite."""
    count = outputs["num_detections"][:, 0]
    used = np.arange(outputs["detection_boxes"].shape[1])[None, :] < count[:, None]
    boxes, scores = outputs["detection_boxes"][used], outputs["detection_scores"][used]
    infinite = int((~np.isfinite(boxes)).any(axis=-1).sum())
    bad_scores = int((~np.isfinite(scores)).sum())
    if not infinite and not bad_scores:
        return None
    parts = []
    if infinite:
        parts.append(f"{infinite} of {len(boxes)} detection boxes are infinite (the model's box regression "
                     "overflows float32 in exp() when decoded, as TensorRT's NMS plugin computes it too; "
                     "the scripts clip boxes to the image)")
    if bad_scores:
        parts.append(f"{bad_scores} detection scores are not finite (the model's class head gives NaN)")
    return "; ".join(parts)


def check_onnx(path, shown_as=None, image=None):
    """Load `path` in ONNX Runtime, run one image (the check scene unless given), check what comes out;
    UserError naming `shown_as` if it would be this tool's fault, one warning for the model's arithmetic."""
    from efficientdet_trt.run.onnx_runner import OnnxCpuRunner

    shown_as = shown_as or path
    runner = OnnxCpuRunner(path)
    try:
        runner.activate()
    except UserError as error:
        raise UserError(f"{shown_as}: {FAILED}: {str(error).split(': ', 1)[-1]}") from None
    declared_classes = int(runner.metadata["num_classes"]) if "num_classes" in runner.metadata else None
    try:
        spec = runner.input_spec()
        image = _check_image(spec) if image is None else image
        try:
            feed = runner.feed(image)
            raw = runner.infer_raw(feed)
            outputs = runner.infer(feed)
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
    note = _arithmetic_note(outputs)
    if note:
        log.warning("%s: on the self-check's synthetic image, %s; the graph is kept", shown_as, note)
    log.info("self-check of %s passed (one image, %d detections)", shown_as, int(outputs["num_detections"][0, 0]))


def write_checked_onnx(path, model):
    """Write `model` to `path` atomically, after its self-check passed on the written bytes."""
    write_bytes_atomic(path, model.SerializeToString(), check=lambda written: check_onnx(written, shown_as=path))
