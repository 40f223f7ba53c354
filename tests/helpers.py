"""Shared test helpers: write graphs, run them, match detection sets."""

import contextlib
import io

import numpy as np
import onnx

from efficientdet_trt.run.nms_reference import iou_one_to_many
from efficientdet_trt.run.onnx_runner import OnnxCpuRunner


def save_and_open(model, path, **runner_options):
    onnx.save(model, str(path))
    return OnnxCpuRunner(str(path), **runner_options).activate()


def as_input(images, layout):
    batch = np.stack(images).astype(np.float32)
    return batch.transpose(0, 3, 1, 2).copy() if layout == "NCHW" else batch


def per_image(outputs, index, clip_to=None):
    """(boxes, scores, classes) of image `index` from the four runner outputs, clipped to (H, W) if given."""
    count = int(outputs["num_detections"][index, 0])
    boxes = outputs["detection_boxes"][index, :count]
    if clip_to is not None:
        height, width = clip_to
        boxes = np.clip(boxes, 0, np.array([height, width, height, width], np.float32))
    return boxes, outputs["detection_scores"][index, :count], outputs["detection_classes"][index, :count].astype(np.int64)


def matched_fraction(reference, ours, min_iou=0.99, max_score_delta=1e-3, same_box_px=0.01):
    """Fraction of `reference` detections with a same-class match in `ours` (IoU, |score delta|).

    Boxes within `same_box_px` on every coordinate also match: clipping to the
    image can leave zero-area boxes, whose IoU with anything (even themselves) is 0.
    """
    ref_boxes, ref_scores, ref_classes = reference
    boxes, scores, classes = ours
    if len(ref_boxes) == 0:
        return 1.0, 0
    matched = 0
    for box, score, cls in zip(ref_boxes, ref_scores, ref_classes):
        if len(boxes) == 0:
            continue
        box = np.asarray(box, np.float32)
        same = (iou_one_to_many(box, boxes) >= min_iou) | (np.abs(boxes - box).max(axis=1) <= same_box_px)
        ok = same & (classes == cls)
        if max_score_delta is not None:
            ok &= np.abs(scores - score) <= max_score_delta
        matched += bool(ok.any())
    return matched / len(ref_boxes), len(ref_boxes)


def coco_annotation(annotations, image_id, category_id, box):
    """Append a COCO ground-truth annotation for `box` (x1, y1, x2, y2 pixels) to `annotations`, with the next id."""
    x1, y1, x2, y2 = box
    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})


def ap_against_reference(reference, ours):
    """COCO AP@[.5:.95] of `ours` scored with `reference` as ground truth.

    Both are lists (one per image) of (boxes yxyx, scores, classes) as per_image returns.
    """
    from pycocotools.coco import COCO

    from efficientdet_trt.evaluate import coco

    def xywh(box):
        y1, x1, y2, x2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    classes = sorted({int(c) for _, _, cls in reference + ours for c in cls})
    dataset = {"images": [{"id": i + 1, "file_name": f"{i}.png"} for i in range(len(reference))],
               "categories": [{"id": c + 1, "name": str(c)} for c in classes], "annotations": []}
    results = []
    for image_id, ((boxes, _, cls), (our_boxes, our_scores, our_cls)) in enumerate(zip(reference, ours), start=1):
        for box, c in zip(boxes, cls):
            x, y, w, h = xywh(box)
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1, "image_id": image_id,
                                           "category_id": int(c) + 1, "bbox": [x, y, w, h], "area": w * h,
                                           "iscrowd": 0})
        results += [{"image_id": image_id, "category_id": int(c) + 1, "bbox": xywh(box), "score": float(s)}
                    for box, s, c in zip(our_boxes, our_scores, our_cls)]
    truth = COCO()
    truth.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return float(coco.evaluate(truth, results, [image["id"] for image in dataset["images"]]).stats[0])


def random_heads(batch, classes, image_size=512, seed=0, score_step=None):
    """Raw box regressions, class logits and anchors shaped like EfficientDet-D0's heads.

    Anchors as AutoML lays them out (levels 3-7, 3 scales x 3 aspect ratios,
    anchor scale 4; 49,104 at 512), regressions ~ N(0, 0.3), logits ~ N(-4, 1.5)
    like a detector's mostly-background scores. `score_step` rounds the logits
    to multiples of it, so that many candidates tie.
    """
    levels = []
    for level in range(3, 8):
        stride = 2 ** level
        centres = (np.arange(image_size // stride) + 0.5) * stride
        yc, xc = np.meshgrid(centres, centres, indexing="ij")
        shapes = [(4 * stride * octave * h, 4 * stride * octave * w)
                  for octave in (1.0, 2 ** (1 / 3), 2 ** (2 / 3)) for h, w in ((1.0, 1.0), (0.7, 1.4), (1.4, 0.7))]
        levels.append(np.stack([np.stack([yc, xc, np.full_like(yc, h), np.full_like(yc, w)], -1)
                                for h, w in shapes], 2).reshape(-1, 4))
    anchors = np.concatenate(levels)[None].astype(np.float32)
    rng = np.random.default_rng(seed)
    boxes = (rng.standard_normal((batch, anchors.shape[1], 4)) * 0.3).astype(np.float32)
    logits = rng.standard_normal((batch, anchors.shape[1], classes)) * 1.5 - 4
    if score_step:
        logits = np.round(logits / score_step) * score_step
    return boxes, logits.astype(np.float32), anchors
