"""NumPy reference implementations of TensorRT's NMS plugins.

These run the `EfficientNMS_TRT` and `BatchedNMS_TRT` nodes of a converted
graph on the CPU (see onnx_runner.py), with the semantics of the plugins'
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
- Arithmetic is float32 and overflows as the kernel's does: a regression
  with exp(t_size) * size_a beyond float32 decodes to a box with infinite
  corners (-inf, inf on that axis), which is output as it is. IoU follows the
  kernel's IOU(): an area is 0 when a side is not positive; IoU is 0 when the
  intersection or the union is not positive, and also when the union is not a
  number (two boxes unbounded on the same axis: inf - inf), where the kernel's
  inf / NaN compares false against the threshold. So an infinite box never
  suppresses nor is suppressed by another infinite box, a finite box's IoU with
  it is 0, and the result is deterministic, with no floating-point warnings.

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

Speed: the candidates are chosen with a partial sort (top_k_order), EfficientNMS
skips pairs below a bound of its 4096th candidate score first, suppression
takes one array step per kept box (BatchedNMS: every class in the same step),
and BatchedNMS stops each class at keep_top_k kept boxes. The outputs are
bit-identical to the plain form kept in tests/nms_loop_oracle.py
(tests/test_nms_reference.py, benchmarks/bench_nms.py).
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
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x < -709: sigmoid 0, as in float32
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def decode_center_size(boxes, anchors):
    """Decode (c0, c1, s0, s1) regressions against (c0, c1, s0, s1) anchors into corners.

    Works for y-first and x-first codings alike: the output keeps the axis
    order of the inputs, as (c0 - s0/2, c1 - s1/2, c0 + s0/2, c1 + s1/2).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow gives infinite corners, as on the GPU
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
    lo1, hi1, area1 = _corners_and_areas(np.asarray(box)[None], offset)
    lo2, hi2, area2 = _corners_and_areas(boxes, offset)
    return _iou(lo1, hi1, area1, lo2, hi2, area2, offset)


def _area(size):
    """Areas of [..., 2] sizes: 0 where a side is not positive (the kernel's area())."""
    height, width = size[..., 0], size[..., 1]
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in the branch np.where drops
        return np.where((height > 0) & (width > 0), height * width, 0.0)


def _corners_and_areas(boxes, offset=0.0):
    lo, hi = _reordered(np.asarray(boxes))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf on a box unbounded both ways
        size = hi - lo + offset
    return lo, hi, _area(size)


def _iou(lo1, hi1, area1, lo2, hi2, area2, offset=0.0):
    """IoU of corners and areas computed once (the two-element products written
    out: much faster than reductions over an axis of length 2). Infinite boxes:
    see the module's notes."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        inter = _area(np.minimum(hi1, hi2) - np.maximum(lo1, lo2) + offset)
        union = area1 + area2 - inter
        return np.where((inter > 0) & (union > 0), inter / union, 0.0)


def top_k_order(values, k):
    """Positions of the `k` largest of `values`, largest first, ties in input order.

    The same as np.argsort(-values, kind="stable")[:k], without sorting all of
    them: a partial sort finds the k-th largest value, every larger one and the
    first ties are taken, and only those are sorted.
    """
    values = np.asarray(values)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if len(values) <= k:
        return np.argsort(-values, kind="stable")
    kth = np.partition(values, len(values) - k)[len(values) - k]
    above = np.flatnonzero(values > kth)
    ties = np.flatnonzero(values == kth)[: k - len(above)]
    chosen = np.sort(np.concatenate([above, ties]))
    return chosen[np.argsort(-values[chosen], kind="stable")]


def _greedy_nms(boxes, classes, iou_threshold, max_keep, class_agnostic):
    """Indices kept by EfficientNMS's greedy NMS over boxes sorted by descending score.

    One step per kept box: it suppresses (IoU >= threshold) every later live box
    of its class (of any class when class_agnostic) at once, and the next live
    box is found with one array search.
    """
    count = len(boxes)
    lo, hi, area = _corners_and_areas(boxes)
    alive = np.ones(count, dtype=bool)
    kept = []
    i = 0
    while i < count and len(kept) < max_keep:
        kept.append(i)
        later = alive[i + 1:] if class_agnostic else alive[i + 1:] & (classes[i + 1:] == classes[i])
        rest = i + 1 + np.flatnonzero(later)
        if len(rest):
            iou = _iou(lo[i:i + 1], hi[i:i + 1], area[i:i + 1], lo[rest], hi[rest], area[rest])
            alive[rest[iou >= iou_threshold]] = False
        following = alive[i + 1:]
        i = i + 1 + int(following.argmax()) if following.any() else count
    return np.asarray(kept, dtype=np.int64)


def _greedy_nms_rows(boxes, valid, iou_threshold, max_keep, offset):
    """BatchedNMS's greedy NMS on every row (class) at once: a [R, K] mask of kept boxes.

    boxes [R, K, 4], each row sorted by descending score, `valid` [R, K] marks
    real entries, `max_keep` [R] the most each row keeps. Each step keeps the
    first live box of every row that still has one and drops the row's boxes
    whose IoU with it is above the threshold.
    """
    lo, hi, area = _corners_and_areas(boxes, offset)
    alive = valid.copy()
    kept = np.zeros_like(valid)
    counts = np.zeros(len(boxes), dtype=np.int64)
    rows = np.flatnonzero(alive.any(axis=1) & (max_keep > 0))
    while len(rows):
        first = alive[rows].argmax(axis=1)
        kept[rows, first] = True
        alive[rows, first] = False
        counts[rows] += 1
        iou = _iou(lo[rows, first][:, None], hi[rows, first][:, None], area[rows, first][:, None],
                   lo[rows], hi[rows], area[rows], offset)
        alive[rows] &= ~(iou > iou_threshold)
        rows = rows[alive[rows].any(axis=1) & (counts[rows] < max_keep[rows])]
    return kept


def _logit_threshold(threshold):
    """The plugin compares raw logits against logit(threshold); <= 0 keeps all."""
    if threshold <= 0:
        return -np.inf
    if threshold >= 1:
        return np.inf
    return float(np.float32(np.log(threshold / (1.0 - threshold))))


def _efficient_nms_candidates(scores, threshold, background_class):
    """The plugin's candidates: flat (anchor-major) indices into scores [A, C], best first.

    A candidate scores at least `threshold` and is not the background class;
    only the best EFFICIENT_NMS_MAX_CANDIDATES of them go on. The K-th largest
    per-anchor best score is a lower bound of the K-th largest candidate score
    (K anchors each have a pair that high), so pairs below it are skipped
    before the partial sort: the same candidates, from a few thousand pairs
    instead of every one.
    """
    classes = scores.shape[1]
    limit = EFFICIENT_NMS_MAX_CANDIDATES
    usable = scores if background_class < 0 else np.delete(scores, background_class, axis=1)
    if len(usable) > limit and usable.shape[1]:
        best = usable.max(axis=1)
        bound = np.partition(best, len(best) - limit)[len(best) - limit]
        if not np.isnan(best).any() and bound > threshold:  # a NaN row has no candidate
            threshold = bound
    flat = scores.reshape(-1)
    candidates = np.flatnonzero(flat >= threshold)
    if background_class >= 0:
        candidates = candidates[candidates % classes != background_class]
    return candidates[top_k_order(flat[candidates], limit)]


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
        candidates = _efficient_nms_candidates(scores[n], threshold, params.background_class)
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
    classes = np.array([c for c in range(num_classes) if c != params.background_label_id], dtype=np.int64)
    for n in range(batch):
        by_class = np.ascontiguousarray(scores[n].T)  # [C, A]
        selected = []
        for c in classes:
            idx = np.flatnonzero(by_class[c] >= params.score_threshold)
            selected.append(idx[top_k_order(by_class[c, idx], params.top_k)])
        width = max((len(idx) for idx in selected), default=0)
        if width == 0:
            continue
        positions = np.zeros((len(classes), width), dtype=np.int64)
        valid = np.zeros((len(classes), width), dtype=bool)
        for row, idx in enumerate(selected):
            positions[row, :len(idx)] = idx
            valid[row, :len(idx)] = True
        location = np.zeros(len(classes), dtype=np.int64) if params.share_location else classes
        row_boxes = boxes[n, positions, location[:, None]]  # [C, K, 4]
        # A class's boxes after its first keep_top_k kept ones can never reach
        # the output (they follow those in the final stable sort), so stop there.
        kept = _greedy_nms_rows(row_boxes, valid, params.iou_threshold,
                                np.minimum(valid.sum(axis=1), limit), offset)
        rows, columns = np.nonzero(kept)  # class by class, in each class's NMS order
        all_scores = by_class[classes[rows], positions[rows, columns]]
        order = top_k_order(all_scores, limit)
        count = len(order)
        out_num[n, 0] = count
        chosen = row_boxes[rows, columns][order]
        out_boxes[n, :count] = np.clip(chosen, 0.0, 1.0) if params.clip_boxes else chosen
        out_scores[n, :count] = all_scores[order]
        out_classes[n, :count] = classes[rows[order]]
    return out_num, out_boxes, out_scores, out_classes
