"""The self-check every written graph passes before it is kept, and what it refuses."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT, input_hw
from helpers import as_input, save_and_open
from PIL import Image
from synthetic_images import make_image

from efficientdet_trt.convert import pipeline
from efficientdet_trt.convert.self_check import check_onnx, write_checked_onnx
from efficientdet_trt.core.common import UserError

PREVIOUS = b"the user's previous model"


def _set_initializer(model, name, values):
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(values, name))
            return
    raise KeyError(name)


def _assert_refused(model, tmp_path, *fragments):
    target = tmp_path / "model.onnx"
    target.write_bytes(PREVIOUS)
    with pytest.raises(UserError) as caught:
        write_checked_onnx(str(target), model)
    message = str(caught.value)
    assert "\n" not in message and str(target) in message and "self-check" in message
    for fragment in fragments:
        assert fragment in message
    assert target.read_bytes() == PREVIOUS
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left


def test_the_lite0_320_graph_with_naive_resize_scales_is_refused(fixture_model, tmp_path):
    """What create_onnx wrote before exact resizes (scales out / in in float32): it does not load."""
    _, converted, _ = fixture_model("lite0_320")
    model = pipeline.build_graph(converted)
    naive = 0
    for tensor in list(model.graph.initializer):
        if tensor.name.endswith("/scales") and onnx.numpy_helper.to_array(tensor)[2] != 2:  # P7 3x3 -> P6 5x5
            _set_initializer(model, tensor.name, np.array([1, 1, 5 / 3, 5 / 3], np.float32))
            naive += 1
    assert naive > 0
    _assert_refused(model, tmp_path, "ONNX Runtime")


def test_anchors_that_do_not_match_the_heads_are_refused(fixture_model, tmp_path):
    _, converted, _ = fixture_model("d0_hard")
    model = pipeline.build_graph(converted)
    anchors = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "nms/anchors:0")
    _set_initializer(model, "nms/anchors:0", anchors[:, :-9])
    _assert_refused(model, tmp_path, "anchors")


def test_a_good_graph_passes_and_is_written(fixture_model, tmp_path):
    _, converted, reference = fixture_model("lite0_320")
    target = tmp_path / "model.onnx"
    write_checked_onnx(str(target), pipeline.build_graph(converted, pipeline.GraphOptions(input_shape="1,3,320,320")))
    check_onnx(str(target))
    runner = save_and_open(onnx.load(str(target)), tmp_path / "copy.onnx")
    outputs = runner.infer({"input": as_input(reference.images[:1], "NCHW")})
    assert outputs["detection_boxes"].shape == (1, 100, 4)


@pytest.mark.parametrize("fixture", ["lite0_320", "d0_640x320"])
def test_cli_converts_native_sizes_that_do_not_halve_evenly(fixture, fixture_model, tmp_path):
    path, _, _ = fixture_model(fixture)
    output = tmp_path / "model.onnx"
    result = subprocess.run([sys.executable, str(ROOT / "create_onnx.py"), "--saved_model", path, "--onnx",
                             str(output)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "self-check of" in result.stderr and "passed" in result.stderr
    height, width = input_hw(fixture)
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(output)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", height, width, 3]


def _warning_lines(stderr):
    return [line for line in stderr.splitlines() if "WARNING" in line or "Warning" in line]


def test_a_model_whose_box_decoder_overflows_is_kept_with_one_warning(fixture_model, tmp_path):
    """Issue 29: a faithful graph whose exp(th) * h overflows float32 converts (exit 0, one warning, no NumPy
    warnings), infer.py gives finite boxes inside the image, and the heads equal TensorFlow's."""
    path, _, reference = fixture_model("d0_overflow")
    output = tmp_path / "model.onnx"
    result = subprocess.run([sys.executable, str(ROOT / "create_onnx.py"), "--saved_model", path, "--onnx",
                             str(output)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = _warning_lines(result.stderr)
    assert len(warnings) == 1 and "infinite" in warnings[0] and "the graph is kept" in warnings[0], warnings
    assert "RuntimeWarning" not in result.stderr and "self-check of" in result.stderr

    # The old check image (uniform noise) overflows too: a warning, not a refusal.
    runner = save_and_open(onnx.load(str(output)), tmp_path / "copy.onnx")
    noise = np.random.default_rng(0).uniform(0, 255, size=(1, 256, 256, 3)).astype(np.float32)
    outputs = runner.infer({"input": noise})
    assert not np.isfinite(outputs["detection_boxes"][0, :outputs["num_detections"][0, 0]]).all()
    check_onnx(str(output), image=noise)  # does not raise

    # Ordinary images: the pre-NMS heads are TensorFlow's, to the other fixtures' 1e-4 or, for values
    # ~200x theirs (box regressions up to ~250 here), to the same float32 rounding relative to them.
    head_names = [item for item in runner.plugin[2] if isinstance(item, str)]
    for image in reference.images:
        raw = runner.infer_raw({"input": as_input([image], "NHWC")})
        for head, tf_value in zip(head_names, reference.run(head_names, image)):
            assert np.abs(raw[head] - tf_value).max() <= max(1e-4, 1e-5 * np.abs(tf_value).max())

    # infer.py: exit 0, every box finite and inside its image.
    images = tmp_path / "images"
    images.mkdir()
    for index, (width, height) in enumerate([(256, 256), (300, 200)]):
        Image.fromarray(np.asarray(make_image(width, height, 40 + index)[0])).save(images / f"img{index}.png")
    result = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--onnx", str(output), "-i", str(images),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RuntimeWarning" not in result.stderr
    rows = 0
    for index, (width, height) in enumerate([(256, 256), (300, 200)]):
        for line in (tmp_path / "out" / f"img{index}.txt").read_text().splitlines():
            x1, y1, x2, y2 = (float(v) for v in line.split("\t")[:4])
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            rows += 1
    assert rows > 0
