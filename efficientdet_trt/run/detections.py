"""Model outputs -> per-image detections in original-image pixels, and their result files."""

from dataclasses import dataclass

import numpy as np

from efficientdet_trt.core.common import atomic_output


@dataclass
class Detections:
    """One image's detections: boxes (x1, y1, x2, y2) in original pixels, scores, 0-based classes."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self):
        return len(self.scores)


def split_batch(outputs, infos, min_score=0.0):
    """Turn the four NMS outputs of a batch into Detections for each real image in `infos`.

    Boxes come from the graph as (ymin, xmin, ymax, xmax) in model-input pixels;
    they are mapped back with each image's own x and y scales and clipped to the
    image, and those left with no area (they lay in the padding) are dropped.
    """
    results = []
    for row, info in enumerate(infos):
        count = int(outputs["num_detections"][row].reshape(-1)[0])
        boxes = np.asarray(outputs["detection_boxes"][row, :count], np.float64)
        scores = np.asarray(outputs["detection_scores"][row, :count], np.float64)
        classes = np.asarray(outputs["detection_classes"][row, :count]).astype(np.int64)
        yxyx = info.to_original(boxes)
        # Boxes lying in the letterbox padding are clipped to nothing at the image edge: not detections.
        keep = (scores >= min_score) & (yxyx[:, 2] > yxyx[:, 0]) & (yxyx[:, 3] > yxyx[:, 1])
        results.append(Detections(yxyx[keep][:, [1, 0, 3, 2]], scores[keep], classes[keep]))
    return results


def match_detections(reference, ours, min_iou=0.5, same_box_px=0.01):
    """Greedy one-to-one matching of `ours` to `reference` (both Detections), same class, best IoU first.

    Returns (matched index in ours or -1 per reference detection, IoU per
    reference detection). Boxes within `same_box_px` on every coordinate count
    as IoU 1 (clipping can leave slivers a fraction of a pixel wide, whose IoU
    is unstable).
    """
    from efficientdet_trt.run.nms_reference import iou_one_to_many

    taken = np.zeros(len(ours), dtype=bool)
    matches = np.full(len(reference), -1, dtype=np.int64)
    ious = np.zeros(len(reference))
    for i in np.argsort(-np.asarray(reference.scores), kind="stable"):
        if len(ours) == 0:
            break
        box = np.asarray(reference.boxes[i], np.float32)
        candidates = np.asarray(ours.boxes, np.float32)
        iou = iou_one_to_many(box, candidates)
        iou = np.where(np.abs(candidates - box).max(axis=1) <= same_box_px, 1.0, iou)
        iou = np.where((ours.classes == reference.classes[i]) & ~taken, iou, -1.0)
        best = int(np.argmax(iou))
        if iou[best] >= min_iou:
            matches[i], ious[i] = best, iou[best]
            taken[best] = True
    return matches, ious


def format_tsv(detections):
    """'xmin ymin xmax ymax score class' per line, tab-separated."""
    lines = [f"{x1:.4f}\t{y1:.4f}\t{x2:.4f}\t{y2:.4f}\t{score:.6f}\t{cls}"
             for (x1, y1, x2, y2), score, cls in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                                     detections.classes.tolist())]
    return "".join(line + "\n" for line in lines)


def write_tsv(path, detections):
    with atomic_output(path, "w") as handle:
        handle.write(format_tsv(detections))


def read_tsv(path):
    """Parse a results file written by write_tsv back into Detections."""
    with open(path, encoding="utf-8") as handle:
        rows = [line.split("\t") for line in handle.read().splitlines() if line.strip()]
    if not rows:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    values = np.array([[float(v) for v in row[:5]] for row in rows])
    return Detections(values[:, :4], values[:, 4], np.array([int(row[5]) for row in rows], np.int64))


def coco_results(detections, image_id, category_ids=None):
    """COCO results entries for one image: bbox [x, y, w, h]; category = category_ids[class] (default class + 1)."""
    entries = []
    for (x1, y1, x2, y2), score, cls in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                            detections.classes.tolist()):
        category = category_ids[cls] if category_ids is not None else cls + 1
        entries.append({"image_id": image_id, "category_id": int(category),
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(float(score), 6)})
    return entries
