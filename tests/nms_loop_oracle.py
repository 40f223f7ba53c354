"""The NMS references as they were before issue 14, kept as the oracle of the fast ones.

nms_reference.py (since issue 14) selects candidates with a partial sort and
suppresses per kept box; this is its first, plain form: a full stable sort of
every candidate and a Python loop over every one (the parameters, decoding and
IoU arithmetic are nms_reference's own). tests/test_nms_reference.py checks
the two give bit-identical outputs; benchmarks/bench_nms.py times both.
Semantics are documented in nms_reference.py. Do not change this file.
"""

import numpy as np

from efficientdet_trt.run.nms_reference import (
    EFFICIENT_NMS_MAX_CANDIDATES,
    EfficientNMSParams,
    _logit_threshold,
    decode_center_size,
    iou_one_to_many,
    sigmoid,
)


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
