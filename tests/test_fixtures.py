"""The test fixtures themselves: the trained EfficientDets really detect the synthetic shapes."""

import numpy as np
import pytest
from conftest import NUM_TEST_IMAGES, TRAINED_FIXTURES, input_hw
from helpers import ap_against_reference
from synthetic_images import make_labelled_image


@pytest.mark.parametrize("name", TRAINED_FIXTURES)
def test_trained_fixture_finds_the_shapes(name, fixture_model):
    """TF's own detections on held-out images, scored against the drawn shapes (rectangle vs ellipse)."""
    _, _, reference = fixture_model(name)
    height, width = input_hw(name)
    truth, found = [], []
    for seed, image in enumerate(reference.images):
        drawn, boxes, classes = make_labelled_image(width, height, seed)
        assert np.array_equal(np.asarray(drawn), image)
        truth.append((np.array([[y1, x1, y2, x2] for x1, y1, x2, y2 in boxes], np.float32),
                      np.ones(len(boxes)), np.array(classes) - 1))
        found.append(reference.detections(image))
    ap = ap_against_reference(truth, found)
    shown = sum(len(scores) for _, scores, _ in found)
    print(f"{name} on {NUM_TEST_IMAGES} held-out images: COCO AP {ap:.3f}, {shown} detections")
    assert ap >= 0.5  # measured 0.78 (D0), 0.71 (Lite0)
    assert shown <= NUM_TEST_IMAGES * 20  # confident detections, not the random fixtures' 100 per image
