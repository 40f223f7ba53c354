"""The NumPy EfficientNMS_TRT / BatchedNMS_TRT references: hand-made cases, and the fast code against the plain loop."""

import nms_loop_oracle
import numpy as np
import pytest
from helpers import random_heads

from efficientdet_trt.run.nms_reference import (
    BatchedNMSParams,
    EfficientNMSParams,
    batched_nms,
    decode_center_size,
    efficient_nms,
    iou_one_to_many,
    sigmoid,
    top_k_order,
)


def corners(*rows):
    return np.array([rows], dtype=np.float32)  # [1, A, 4]


def one_class_scores(*values):
    return np.array(values, dtype=np.float32).reshape(1, -1, 1)


def plain(**overrides):
    """Corner boxes, probabilities as scores (no sigmoid), per-class NMS."""
    params = dict(score_threshold=0.1, iou_threshold=0.5, max_output_boxes=10, score_activation=False, box_coding=0)
    params.update(overrides)
    return EfficientNMSParams(**params)


def grid_boxes(count, size=10.0):
    """`count` disjoint boxes on a grid."""
    side = int(np.ceil(np.sqrt(count)))
    rows = [(r * 2 * size, c * 2 * size, r * 2 * size + size, c * 2 * size + size)
            for r in range(side) for c in range(side)][:count]
    return np.array([rows], dtype=np.float32)


def test_iou_basic_and_reordered():
    box = np.array([0, 0, 10, 10], np.float32)
    others = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [10, 10, 0, 0]], np.float32)
    assert np.allclose(iou_one_to_many(box, others), [1.0, 50 / 150, 0.0, 1.0])


def test_overlap_suppresses_lower_score_of_same_class():
    boxes = corners((0, 0, 10, 10), (1, 0, 11, 10), (50, 50, 60, 60))
    num, out_boxes, scores, classes = efficient_nms(boxes, one_class_scores(0.9, 0.8, 0.7), params=plain())
    assert num[0, 0] == 2
    assert np.allclose(scores[0, :2], [0.9, 0.7])
    assert np.allclose(out_boxes[0, 1], [50, 50, 60, 60])


def test_iou_equal_to_threshold_suppresses():
    boxes = corners((0, 0, 10, 20), (0, 0, 10, 10))  # IoU exactly 100 / 200
    assert iou_one_to_many(boxes[0, 0], boxes[0, 1:])[0] == 0.5
    num, _, _, _ = efficient_nms(boxes, one_class_scores(0.9, 0.8), params=plain(iou_threshold=0.5))
    assert num[0, 0] == 1  # IoU >= threshold drops
    num, _, _, _ = efficient_nms(boxes, one_class_scores(0.9, 0.8), params=plain(iou_threshold=0.5001))
    assert num[0, 0] == 2


def test_different_classes_do_not_suppress_unless_class_agnostic():
    boxes = corners((0, 0, 10, 10), (0, 0, 10, 10))
    scores = np.array([[[0.9, 0.0], [0.0, 0.8]]], np.float32)
    num, _, _, classes = efficient_nms(boxes, scores, params=plain())
    assert num[0, 0] == 2 and classes[0, :2].tolist() == [0, 1]
    num, _, _, classes = efficient_nms(boxes, scores, params=plain(class_agnostic=True))
    assert num[0, 0] == 1 and classes[0, 0] == 0


def test_one_anchor_can_give_several_classes():
    boxes = corners((0, 0, 10, 10))
    scores = np.array([[[0.3, 0.9, 0.5]]], np.float32)
    num, _, out_scores, classes = efficient_nms(boxes, scores, params=plain())
    assert num[0, 0] == 3
    assert classes[0, :3].tolist() == [1, 2, 0]
    assert np.allclose(out_scores[0, :3], [0.9, 0.5, 0.3])


def test_score_threshold_keeps_equal_and_drops_below():
    boxes = grid_boxes(3)
    num, _, scores, _ = efficient_nms(boxes, one_class_scores(0.5, 0.1, 0.0999), params=plain(score_threshold=0.1))
    assert num[0, 0] == 2 and np.allclose(scores[0, :2], [0.5, 0.1])


def test_score_activation_thresholds_logits_and_outputs_sigmoid():
    boxes = grid_boxes(3)
    logits = one_class_scores(2.0, 0.0, -0.5)
    params = plain(score_threshold=0.45, score_activation=True)  # logit(0.45) = -0.2007
    num, _, scores, _ = efficient_nms(boxes, logits, params=params)
    assert num[0, 0] == 2
    assert np.allclose(scores[0, :2], 1 / (1 + np.exp(-np.array([2.0, 0.0]))), atol=1e-7)


def test_threshold_zero_keeps_everything_even_very_negative_logits():
    boxes = grid_boxes(4)
    logits = one_class_scores(-30.0, -5.0, 0.0, 3.0)
    num, _, scores, _ = efficient_nms(boxes, logits, params=plain(score_threshold=0.0, score_activation=True))
    assert num[0, 0] == 4
    assert scores[0, 3] == pytest.approx(1 / (1 + np.exp(30.0)), rel=1e-5)


def test_ties_keep_input_order():
    boxes = grid_boxes(4)
    num, out_boxes, _, _ = efficient_nms(boxes, one_class_scores(0.5, 0.7, 0.5, 0.5), params=plain())
    assert num[0, 0] == 4
    order = [int(np.argmin(np.abs(boxes[0] - b).sum(axis=1))) for b in out_boxes[0, :4]]
    assert order == [1, 0, 2, 3]


def test_empty_result_is_all_zero():
    boxes = grid_boxes(3)
    num, out_boxes, scores, classes = efficient_nms(boxes, one_class_scores(0.01, 0.02, 0.03), params=plain())
    assert num[0, 0] == 0
    assert not out_boxes.any() and not scores.any() and not classes.any()
    assert out_boxes.shape == (1, 10, 4) and scores.shape == (1, 10) and classes.dtype == np.int32


def test_more_candidates_than_max_output_boxes_keeps_the_best_and_pads():
    boxes = grid_boxes(30)
    values = np.linspace(0.2, 0.95, 30)
    num, _, scores, _ = efficient_nms(boxes, one_class_scores(*values), params=plain(max_output_boxes=5))
    assert num[0, 0] == 5
    assert np.allclose(scores[0], np.sort(values)[::-1][:5], atol=1e-6)
    num, _, scores, _ = efficient_nms(boxes[:, :3], one_class_scores(*values[:3]), params=plain(max_output_boxes=5))
    assert num[0, 0] == 3 and not scores[0, 3:].any()


def test_at_most_4096_candidates_reach_nms():
    boxes = grid_boxes(5000, size=1.0)
    scores = one_class_scores(*np.linspace(0.5, 0.9, 5000))
    num, _, _, _ = efficient_nms(boxes, scores, params=plain(max_output_boxes=5000))
    assert num[0, 0] == 4096


def test_background_class_is_ignored():
    boxes = grid_boxes(2)
    scores = np.array([[[0.9, 0.2], [0.1, 0.8]]], np.float32)
    num, _, _, classes = efficient_nms(boxes, scores, params=plain(background_class=0))
    assert num[0, 0] == 2 and classes[0, :2].tolist() == [1, 1]


def test_box_coding_1_decodes_against_anchors():
    anchors = np.array([[[50, 100, 20, 40]]], np.float32)  # yc, xc, h, w
    regression = np.array([[[0.5, -0.25, np.log(2.0), 0.0]]], np.float32)
    num, out_boxes, _, _ = efficient_nms(regression, one_class_scores(0.9), anchors,
                                         params=plain(box_coding=1))
    # yc = 0.5*20+50 = 60, xc = -0.25*40+100 = 90, h = 40, w = 40
    assert num[0, 0] == 1
    assert np.allclose(out_boxes[0, 0], [40, 70, 80, 110])
    assert np.allclose(decode_center_size(regression, anchors), [[[40, 70, 80, 110]]])


def test_overflowing_box_regressions_decode_to_infinite_boxes_with_defined_suppression():
    """Issue 29: exp(th) * h beyond float32 gives an infinite box, as on the GPU. Its IoU with a finite box is
    0 (inf union) and with another infinite box too (the kernel's inf / NaN fails `>= threshold`), so
    suppression stays defined and deterministic, and no floating-point warning is raised."""
    anchors = np.array([[[50, 50, 20, 20]] * 4], np.float32)  # (yc, xc, h, w)
    regressions = np.array([[[0, 0, 200, 0],    # h = exp(200) * 20: inf -> y from -inf to inf
                             [0, 0, 150, 150],  # inf both ways
                             [0, 0, 0, 0],      # the anchor itself, inside both infinite boxes
                             [0, 0, 0, 0.01]]], np.float32)  # nearly the anchor: IoU 0.99 with it
    scores = np.array([[[3.0], [2.0], [1.0], [0.5]]], np.float32)
    params = EfficientNMSParams(score_threshold=0.1, iou_threshold=0.5, max_output_boxes=10)
    with np.errstate(all="raise"):  # a NumPy floating-point warning fails the test
        results = efficient_nms(regressions, scores, anchors, params)
        again = efficient_nms(regressions, scores, anchors, params)
    count, boxes, out_scores, _ = results
    assert count[0, 0] == 3  # the two infinite boxes and the anchor; the near-copy is suppressed by the anchor
    assert np.array_equal(boxes[0, 0], [-np.inf, 40, np.inf, 60])
    assert np.isinf(boxes[0, 1]).all() and np.isfinite(boxes[0, 2]).all()
    assert np.allclose(out_scores[0, :3], sigmoid([3.0, 2.0, 1.0]))
    for ours, repeated in zip(results, again):
        assert np.array_equal(ours, repeated)
    for ours, oracle in zip(results, nms_loop_oracle.efficient_nms(regressions, scores, anchors, params)):
        assert np.array_equal(ours, oracle)


def test_batch_images_are_independent():
    boxes = np.concatenate([grid_boxes(3), grid_boxes(3)[:, ::-1]])
    scores = np.array([[[0.9], [0.05], [0.6]], [[0.05], [0.05], [0.05]]], np.float32)
    num, _, out_scores, _ = efficient_nms(boxes, scores, params=plain())
    assert num[:, 0].tolist() == [2, 0]
    assert np.allclose(out_scores[0, :2], [0.9, 0.6]) and not out_scores[1].any()


def test_batched_nms_per_class_topk_and_keep_top_k():
    boxes = grid_boxes(6)[:, :, None, :]  # [1, A, 1, 4]
    scores = np.zeros((1, 6, 2), np.float32)
    scores[0, :, 0] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    scores[0, :, 1] = [0.85, 0, 0, 0, 0, 0]
    params = BatchedNMSParams(num_classes=2, score_threshold=0.3, iou_threshold=0.5, top_k=3, keep_top_k=4,
                              is_normalized=True)
    num, _, out_scores, classes = batched_nms(boxes, scores, params)
    assert num[0, 0] == 4
    assert np.allclose(out_scores[0], [0.9, 0.85, 0.8, 0.7])
    assert classes.dtype == np.float32 and classes[0].tolist() == [0, 1, 0, 0]


def test_batched_nms_unnormalized_boxes_use_pixel_inclusive_iou():
    # Boxes touching edge-to-edge: IoU 0 normalized, > 0 with Caffe's +1 pixel widths.
    boxes = np.array([[[[0, 0, 9, 9]], [[0, 9, 9, 18]]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    normalized = BatchedNMSParams(num_classes=1, score_threshold=0.1, iou_threshold=0.05, is_normalized=True)
    pixels = BatchedNMSParams(num_classes=1, score_threshold=0.1, iou_threshold=0.05, is_normalized=False)
    assert batched_nms(boxes, scores, normalized)[0][0, 0] == 2
    assert batched_nms(boxes, scores, pixels)[0][0, 0] == 1


def test_top_k_order_equals_a_full_stable_sort():
    rng = np.random.default_rng(3)
    for values in (rng.standard_normal(1000).astype(np.float32), np.round(rng.standard_normal(1000)),
                   np.zeros(50, np.float32), np.array([0.0, -0.0, np.inf, -np.inf, 1.0], np.float32)):
        for k in (0, 1, 7, 49, 50, 999, 1000, 5000):
            assert np.array_equal(top_k_order(values, k), np.argsort(-values, kind="stable")[:k])


def same_outputs(ours, oracle):
    return all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) for a, b in zip(ours, oracle))


@pytest.mark.parametrize("threshold", [0.0, 0.001, 0.4])
def test_efficient_nms_is_bit_identical_to_the_plain_loop_on_d0_sized_heads(threshold):
    """49,104 anchors x 90 classes, as D0 at 512 gives: the fast selection and suppression change nothing."""
    boxes, logits, anchors = random_heads(batch=2, classes=90, seed=int(threshold * 1000))
    for params in (EfficientNMSParams(score_threshold=threshold, iou_threshold=0.5, max_output_boxes=100),
                   EfficientNMSParams(score_threshold=threshold, iou_threshold=0.5, max_output_boxes=100,
                                      class_agnostic=True),
                   EfficientNMSParams(score_threshold=threshold, iou_threshold=0.3, max_output_boxes=300,
                                      background_class=0)):
        ours = efficient_nms(boxes, logits, anchors, params)
        assert same_outputs(ours, nms_loop_oracle.efficient_nms(boxes, logits, anchors, params))
        assert ours[0].min() > 0


def test_efficient_nms_is_bit_identical_when_many_candidates_tie():
    boxes, logits, anchors = random_heads(batch=1, classes=90, seed=5, score_step=0.5)
    params = EfficientNMSParams(score_threshold=0.0, iou_threshold=0.5, max_output_boxes=500)
    assert same_outputs(efficient_nms(boxes, logits, anchors, params),
                        nms_loop_oracle.efficient_nms(boxes, logits, anchors, params))


@pytest.mark.parametrize("threshold", [0.0, 0.001, 0.4])
def test_batched_nms_is_bit_identical_to_the_plain_loop_on_d0_sized_heads(threshold):
    boxes, logits, anchors = random_heads(batch=1, classes=90, seed=10 + int(threshold * 1000))
    decoded = decode_center_size(boxes, anchors)[:, :, None, :]
    scores = sigmoid(logits)
    variants = [BatchedNMSParams(num_classes=90, score_threshold=threshold, iou_threshold=0.5, is_normalized=False)]
    if threshold == 0.4:  # the plain loop takes ~7 s per run at the lower thresholds
        variants.append(BatchedNMSParams(num_classes=90, score_threshold=threshold, iou_threshold=0.3, top_k=300,
                                         keep_top_k=200, background_label_id=0, is_normalized=True))
    for params in variants:
        ours = batched_nms(decoded, scores, params)
        assert same_outputs(ours, nms_loop_oracle.batched_nms(decoded, scores, params))
        assert ours[0].min() > 0


def test_batched_nms_per_class_locations_are_bit_identical():
    boxes, logits, anchors = random_heads(batch=1, classes=3, image_size=256, seed=7, score_step=0.25)
    decoded = decode_center_size(boxes, anchors)
    per_class = np.stack([decoded, decoded[:, ::-1], decoded * 1.01], axis=2)  # [N, A, 3, 4]
    params = BatchedNMSParams(num_classes=3, score_threshold=0.01, share_location=False, is_normalized=False)
    assert same_outputs(batched_nms(per_class, sigmoid(logits), params),
                        nms_loop_oracle.batched_nms(per_class, sigmoid(logits), params))
