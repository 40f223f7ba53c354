"""detections.split_batch: model outputs to original-image detections."""

import numpy as np

from efficientdet_trt.run.detections import split_batch
from image_batcher import ImageInfo


def test_boxes_left_without_area_after_clipping_are_dropped():
    """A 100x50 image fitted at scale 1 into a 100x100 input: rows 50-100 are padding."""
    boxes = np.array([[[10, 10, 40, 60],     # inside the image
                       [45, 20, 70, 80],     # straddles the bottom edge: clipped, kept
                       [60, 10, 90, 50],     # entirely in the padding: clipped to nothing, dropped
                       [20, 100, 30, 120],   # beyond the right edge: dropped
                       [0, 0, 0, 0]]], np.float32)
    outputs = {"num_detections": np.array([[4]], np.int32), "detection_boxes": boxes,
               "detection_scores": np.array([[0.9, 0.8, 0.7, 0.6, 0.0]], np.float32),
               "detection_classes": np.array([[1, 2, 3, 4, 0]], np.int32)}
    info = ImageInfo("image.png", width=100, height=50, scale_x=1.0, scale_y=1.0)
    (found,) = split_batch(outputs, [info])
    assert found.classes.tolist() == [1, 2]
    assert np.allclose(found.boxes, [[10, 10, 60, 40], [20, 45, 80, 50]])  # x1, y1, x2, y2
    assert np.allclose(found.scores, [0.9, 0.8])
    (high,) = split_batch(outputs, [info], min_score=0.85)
    assert high.classes.tolist() == [1]
