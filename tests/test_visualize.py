"""Drawing detections and side-by-side comparisons with current Pillow."""

import numpy as np
from PIL import Image

from visualize import class_color, concat_visualizations, label_text, visualize_detections


def test_boxes_and_labels_are_drawn_in_class_colours():
    image = Image.new("RGB", (200, 150), (0, 0, 0))
    drawn = visualize_detections(image, np.array([[20, 60, 120, 140]]), [0.87], [17], labels=["x"] * 17 + ["cat"])
    pixels = np.asarray(drawn)
    assert tuple(pixels[139, 70]) == class_color(17)  # bottom edge
    assert tuple(pixels[100, 20]) == class_color(17)  # left edge
    assert tuple(pixels[100, 70]) == (0, 0, 0)  # inside untouched
    tag = (np.abs(pixels[45:60, 20:120].astype(int) - class_color(17)).max(axis=2) == 0)
    assert tag.sum() > 300 and tag[:, 0].mean() > 0.7  # a filled label tag above the box, from its left edge
    assert np.asarray(image).max() == 0  # the input is not modified
    assert label_text(17, 0.87, ["x"] * 17 + ["cat"]) == "cat: 87%" and label_text(99, 0.5) == "class 99: 50%"


def test_concat_scales_to_a_common_height_and_titles():
    left, right = Image.new("RGB", (100, 50), (255, 0, 0)), Image.new("RGB", (40, 100), (0, 0, 255))
    joined = concat_visualizations([left, right], titles=["TensorFlow", "TensorRT"], gap=10)
    assert joined.width == 200 + 10 + 40 and joined.height > 100
    pixels = np.asarray(joined)
    assert tuple(pixels[-1, 5]) == (255, 0, 0) and tuple(pixels[-1, 215]) == (0, 0, 255)
