"""Entropy calibration thresholds and TensorRT's calibration cache format."""

import numpy as np
import pytest

from efficientdet_trt.core.common import UserError
from efficientdet_trt.precision.calibration import (
    HistogramCollector,
    entropy_threshold,
    float_to_hex,
    format_cache,
    read_cache,
    write_cache,
)


def test_uniform_data_keeps_almost_the_whole_range():
    values = np.random.default_rng(0).uniform(-4, 4, size=200_000)
    collector = HistogramCollector()
    collector.observe({"x": values})
    threshold = collector.scales()["x"] * 127
    assert 3.6 <= threshold <= 4.0 + 4.0 / 2048  # at most half a bin past max |x|


def test_rare_outliers_are_clipped():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, 500_000), [60.0, -55.0]])  # two huge outliers
    collector = HistogramCollector()
    collector.observe({"x": values})
    threshold = collector.scales()["x"] * 127
    assert 2.0 < threshold < 15.0  # far below max |x| = 60, above the bulk of the Gaussian


def test_one_pass_histogram_equals_two_passes_over_the_final_range():
    rng = np.random.default_rng(2)
    batches = [rng.normal(0, s, 10_000) for s in (0.3, 1.0, 5.0, 2.0)]  # the range grows twice
    collector = HistogramCollector()
    for batch in batches:
        collector.observe({"x": batch})
    top = collector.range["x"]
    assert collector.max["x"] == pytest.approx(max(np.abs(b).max() for b in batches))
    assert collector.max["x"] <= top < 4 * collector.max["x"]
    two_pass, _ = np.histogram(np.abs(np.concatenate(batches)).astype(np.float32), bins=2048, range=(0, top))
    assert collector.histograms["x"].sum() == 40_000
    # Bin-edge rounding may move a value to the neighbouring bin, nothing more.
    assert np.abs(collector.histograms["x"] - two_pass).sum() <= 4


def test_all_zero_tensor_gets_a_small_positive_scale():
    collector = HistogramCollector()
    collector.observe({"z": np.zeros((2, 8))})
    assert 0 < collector.scales()["z"] < 1e-2


def test_threshold_of_a_single_spike_is_near_it():
    histogram = np.zeros(2048)
    histogram[1000] = 100
    assert entropy_threshold(histogram, 0.01) == pytest.approx(10.01, abs=0.2)


def test_cache_round_trips_exact_float32_bits(tmp_path):
    scales = {"input": 2.0 / 127, "efficientnet-b0/stem/conv2d/Conv2D:0": np.float32(0.0123456789),
              "(Unnamed Layer* 7) [Convolution]_output": 1e-6}
    path = tmp_path / "calib.cache"
    write_cache(str(path), scales)
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert f"input: {float_to_hex(2.0 / 127)}" in text and len(text.splitlines()) == 4
    read = read_cache(str(path))
    assert list(read) == list(scales)
    for name, value in scales.items():
        assert np.float32(read[name]) == np.float32(value)


def test_cache_values_are_big_endian_float32_bits(tmp_path):
    path = tmp_path / "c.cache"
    path.write_text("TRT-100100-EntropyCalibration2\ninput: 3f800000\nx: 3c000000\n")
    assert read_cache(str(path)) == {"input": 1.0, "x": 2.0 ** -7}


@pytest.mark.parametrize("text,fragment", [("hello\n", "not a TensorRT"), ("TRT-8601-EntropyCalibration2\nx: zz\n",
                                                                           "line 2"),
                                           ("", "not a TensorRT")])
def test_corrupt_cache_is_a_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment):
        read_cache(str(path))


def test_format_cache_keeps_names_with_colons():
    text = format_cache({"a: b": 0.5})
    assert text.splitlines()[1] == f"a: b: {float_to_hex(0.5)}"


def test_relu_zeros_do_not_pull_the_threshold_down():
    # Half zeros (a ReLU output) and a long positive tail: without discounting bin 0
    # the divergence favoured thresholds that clipped ~5% of such activations.
    rng = np.random.default_rng(3)
    values = np.maximum(rng.standard_t(4, size=400_000), 0)
    collector = HistogramCollector()
    collector.observe({"relu": values})
    threshold = collector.scales()["relu"] * 127
    assert np.mean(values > threshold) < 0.001


def test_minmax_scales_are_the_largest_magnitude_over_all_batches():
    collector = HistogramCollector()
    collector.observe({"x": np.array([0.5, -2.0])})
    collector.observe({"x": np.array([3.0, -1.0])})
    assert collector.scales("minmax")["x"] == pytest.approx(3.0 / 127)
    assert collector.scales("entropy")["x"] != collector.scales("minmax")["x"]


def test_minmax_cache_has_tensorrts_minmax_header_and_is_checked(tmp_path):
    path = tmp_path / "m.cache"
    write_cache(str(path), {"x": 0.25}, method="minmax")
    assert path.read_text().splitlines()[0] == "TRT-8601-MinMaxCalibration"
    assert read_cache(str(path), "minmax") == {"x": 0.25}
    with pytest.raises(UserError, match="made by minmax calibration, not entropy.*--calib_method minmax"):
        read_cache(str(path), "entropy")
