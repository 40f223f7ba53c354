"""NumPy reference implementations of TensorRT's NMS plugins.

These run the `EfficientNMS_TRT` and `BatchedNMS_TRT` nodes of a converted
graph on the CPU (see runners.py), with the semantics of the plugins'
documentation (NVIDIA/TensorRT plugin/efficientNMSPlugin/README.md and
plugin/batchedNMSPlugin/README.md) and, where the documentation is silent,
of their CUDA kernels:

EfficientNMS_TRT
- box_coding 0: boxes are corners (the first two numbers one corner, the last
  two the other); box_coding 1: (y_c, x_c, h, w) or (x_c, y_c, w, h) center-size,
  decoded against the anchors as AutoML does (c = t*size_a + c_a,
  size = exp(t_size)*size_a) when anchors are given. The output is corners in
  the input's axis order.
- Scores at or above `score_threshold` become candidates. With
  score_activation the threshold is compared in logit space (logit(t); t <= 0
  keeps everything) and the sigmoid is applied to the kept boxes only.
- Candidates are sorted by score, descending; ties keep input order
  (anchor-major, class-minor). At most 4096 candidates go to NMS.
- Greedy NMS in that order: a candidate is dropped if a kept box of the same
  class (any class when class_agnostic) has IoU >= iou_threshold with it. IoU
  is computed on corner boxes with their coordinates reordered min/max.
- Output: num_detections [N,1] int32, detection_boxes [N,D,4],
  detection_scores [N,D], detection_classes [N,D] int32; unused rows zero.

The CUDA kernel has one undocumented quirk this reference does not copy: for
thresholds below sigmoid^-1(0.007) it may fill empty output rows with
below-threshold boxes of score 0 when too few boxes pass.

BatchedNMS_TRT (for TensorRT < 8)
- boxes [N, A, 1, 4] (share_location) or [N, A, C, 4], corners
  (x1, y1, x2, y2 or the y-first order, IoU is symmetric); scores [N, A, C]
  already activated.
- Per class: scores >= score_threshold, the `topK` best are kept, greedy NMS
  drops a box whose IoU with a kept one is > iou_threshold. With is_normalized
  false, widths and heights get +1 (Caffe semantics, the plugin's default).
- All classes merged, sorted by score, the best keep_top_k written; classes as
  float32.
"""

from dataclasses import dataclass

import numpy as np

EFFICIENT_NMS_MAX_CANDIDATES = 4096


@dataclass
class EfficientNMSParams:
    score_threshold: float = 0.4
    iou_threshold: float = 0.5
    max_output_boxes: int = 100
    background_class: int = -1
    score_activation: bool = True
    class_agnostic: bool = False
    box_coding: int = 1

    @classmethod
    def from_attrs(cls, attrs):
        """Build from an ONNX node's attribute dict (as onnx-graphsurgeon gives it)."""
        return cls(
            score_threshold=float(attrs.get("score_threshold", 0.0)),
            iou_threshold=float(attrs.get("iou_threshold", 0.0)),
            max_output_boxes=int(attrs.get("max_output_boxes", 100)),
            background_class=int(attrs.get("background_class", -1)),
            score_activation=bool(int(attrs.get("score_activation", 0))),
            class_agnostic=bool(int(attrs.get("class_agnostic", 0))),
            box_coding=int(attrs.get("box_coding", 0)),
        )


@dataclass
class BatchedNMSParams:
    num_classes: int
    score_threshold: float = 0.4
    iou_threshold: float = 0.5
    top_k: int = 1024
    keep_top_k: int = 100
    background_label_id: int = -1
    share_location: bool = True
    is_normalized: bool = False
    clip_boxes: bool = False

    @classmethod
    def from_attrs(cls, attrs):
        return cls(
            num_classes=int(attrs["numClasses"]),
            score_threshold=float(attrs.get("scoreThreshold", 0.0)),
            iou_threshold=float(attrs.get("iouThreshold", 0.5)),
            top_k=int(attrs.get("topK", 1024)),
            keep_top_k=int(attrs.get("keepTopK", 100)),
            background_label_id=int(attrs.get("backgroundLabelId", -1)),
            share_location=bool(int(attrs.get("shareLocation", 1))),
            is_normalized=bool(int(attrs.get("isNormalized", 1))),
            clip_boxes=bool(int(attrs.get("clipBoxes", 0))),
        )


def sigmoid(x):
    x = np.asarray(x, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def decode_center_size(boxes, anchors):
    """Decode (c0, c1, s0, s1) regressions against (c0, c1, s0, s1) anchors into corners.

    Works for y-first and x-first codings alike: the output keeps the axis
    order of the inputs, as (c0 - s0/2, c1 - s1/2, c0 + s0/2, c1 + s1/2).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if anchors is None:
        center, size = boxes[..., :2], boxes[..., 2:]
    else:
        anchors = np.asarray(anchors, dtype=np.float32)
        center = boxes[..., :2] * anchors[..., 2:] + anchors[..., :2]
        size = np.exp(boxes[..., 2:]) * anchors[..., 2:]
    return np.concatenate([center - size / 2, center + size / 2], axis=-1).astype(np.float32)


def _reordered(corners):
    lo = np.minimum(corners[..., :2], corners[..., 2:])
    hi = np.maximum(corners[..., :2], corners[..., 2:])
    return lo, hi


def iou_one_to_many(box, boxes, offset=0.0):
    """IoU of one corner box with many; coordinates are reordered min/max first.

    `offset` 1.0 gives Caffe's pixel-inclusive areas (BatchedNMS, unnormalized).
    """
    lo1, hi1 = _reordered(box[None])
    lo2, hi2 = _reordered(boxes)
    inter_size = np.minimum(hi1, hi2) - np.maximum(lo1, lo2) + offset
    inter = np.where((inter_size > 0).all(axis=-1), inter_size.prod(axis=-1), 0.0)
    area1 = (hi1 - lo1 + offset).prod(axis=-1)
    area2 = (hi2 - lo2 + offset).prod(axis=-1)
    union = area1 + area2 - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((inter > 0) & (union > 0), inter / union, 0.0)


def _greedy_nms(boxes, classes, iou_threshold, max_keep, class_agnostic, suppress_at_equal=True, offset=0.0):
    """Indices kept by greedy NMS over boxes already sorted by descending score."""
    count = len(boxes)
    alive = np.ones(count, dtype=bool)
    kept = []
    for i in range(count):
        if not alive[i]:
            continue
        if len(kept) >= max_keep:
            break
        kept.append(i)
        rest = np.arange(i + 1, count)
        rest = rest[alive[rest]]
        if not class_agnostic:
            rest = rest[classes[rest] == classes[i]]
        if len(rest) == 0:
            continue
        iou = iou_one_to_many(boxes[i], boxes[rest], offset)
        drop = iou >= iou_threshold if suppress_at_equal else iou > iou_threshold
        alive[rest[drop]] = False
    return np.asarray(kept, dtype=np.int64)


def _logit_threshold(threshold):
    """The plugin compares raw logits against logit(threshold); <= 0 keeps all."""
    if threshold <= 0:
        return -np.inf
    if threshold >= 1:
        return np.inf
    return float(np.float32(np.log(threshold / (1.0 - threshold))))


def efficient_nms(boxes, scores, anchors=None, params=None):
    """Run EfficientNMS_TRT on a batch.

    boxes: [N, A, 4] (or [N, A, 1, 4]); scores: [N, A, C]; anchors: [1 or N, A, 4] or None.
    Returns (num_detections, detection_boxes, detection_scores, detection_classes).
    """
    params = params or EfficientNMSParams()
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim == 4:
        if boxes.shape[2] != 1:
            raise ValueError("EfficientNMS reference supports shared box locations only ([N, A, 1, 4])")
        boxes = boxes[:, :, 0, :]
    batch, num_anchors, num_classes = scores.shape
    if boxes.shape[:2] != (batch, num_anchors) or boxes.shape[2] != 4:
        raise ValueError(f"boxes {boxes.shape} do not match scores {scores.shape}")
    limit = params.max_output_boxes
    out_num = np.zeros((batch, 1), dtype=np.int32)
    out_boxes = np.zeros((batch, limit, 4), dtype=np.float32)
    out_scores = np.zeros((batch, limit), dtype=np.float32)
    out_classes = np.zeros((batch, limit), dtype=np.int32)

    threshold = float(params.score_threshold)
    if params.score_activation:
        threshold = _logit_threshold(threshold)

    for n in range(batch):
        flat = scores[n].reshape(-1)
        candidates = np.nonzero(flat >= threshold)[0]
        if params.background_class >= 0:
            candidates = candidates[candidates % num_classes != params.background_class]
        order = np.argsort(-flat[candidates], kind="stable")[:EFFICIENT_NMS_MAX_CANDIDATES]
        candidates = candidates[order]
        anchor_idx = candidates // num_classes
        class_idx = (candidates % num_classes).astype(np.int32)
        raw = boxes[n, anchor_idx]
        if params.box_coding == 1:
            anchor_rows = None
            if anchors is not None:
                anchor_set = np.asarray(anchors, dtype=np.float32)
                anchor_rows = anchor_set[0 if anchor_set.shape[0] == 1 else n, anchor_idx]
            corners = decode_center_size(raw, anchor_rows)
        else:
            corners = raw
            if anchors is not None:
                raise ValueError("anchors are only used with box_coding 1")
        kept = _greedy_nms(corners, class_idx, params.iou_threshold, limit, params.class_agnostic)
        count = len(kept)
        out_num[n, 0] = count
        out_boxes[n, :count] = corners[kept]
        kept_scores = flat[candidates[kept]]
        out_scores[n, :count] = sigmoid(kept_scores) if params.score_activation else kept_scores
        out_classes[n, :count] = class_idx[kept]
    return out_num, out_boxes, out_scores, out_classes


def batched_nms(boxes, scores, params):
    """Run BatchedNMS_TRT on a batch: boxes [N, A, 1 or C, 4], scores [N, A, C]."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    batch, num_anchors, num_classes = scores.shape
    limit = params.keep_top_k
    offset = 0.0 if params.is_normalized else 1.0
    out_num = np.zeros((batch, 1), dtype=np.int32)
    out_boxes = np.zeros((batch, limit, 4), dtype=np.float32)
    out_scores = np.zeros((batch, limit), dtype=np.float32)
    out_classes = np.zeros((batch, limit), dtype=np.float32)
    for n in range(batch):
        picked_scores, picked_boxes, picked_classes = [], [], []
        for c in range(num_classes):
            if c == params.background_label_id:
                continue
            class_boxes = boxes[n, :, 0 if params.share_location else c, :]
            idx = np.nonzero(scores[n, :, c] >= params.score_threshold)[0]
            idx = idx[np.argsort(-scores[n, idx, c], kind="stable")][: params.top_k]
            kept = _greedy_nms(class_boxes[idx], np.zeros(len(idx)), params.iou_threshold, len(idx),
                               class_agnostic=True, suppress_at_equal=False, offset=offset)
            picked_scores.append(scores[n, idx[kept], c])
            picked_boxes.append(class_boxes[idx[kept]])
            picked_classes.append(np.full(len(kept), c, dtype=np.float32))
        if not picked_scores:
            continue
        all_scores = np.concatenate(picked_scores)
        order = np.argsort(-all_scores, kind="stable")[:limit]
        count = len(order)
        out_num[n, 0] = count
        chosen = np.concatenate(picked_boxes)[order]
        out_boxes[n, :count] = np.clip(chosen, 0.0, 1.0) if params.clip_boxes else chosen
        out_scores[n, :count] = all_scores[order]
        out_classes[n, :count] = np.concatenate(picked_classes)[order]
    return out_num, out_boxes, out_scores, out_classes
