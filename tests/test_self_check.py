"""The self-check every written graph passes before it is kept, and what it refuses."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

import create_onnx
from common import UserError
from conftest import ROOT, input_hw
from helpers import as_input, save_and_open
from self_check import check_onnx, write_checked_onnx

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
    model = create_onnx.build_graph(converted)
    naive = 0
    for tensor in list(model.graph.initializer):
        if tensor.name.endswith("/scales") and onnx.numpy_helper.to_array(tensor)[2] != 2:  # P7 3x3 -> P6 5x5
            _set_initializer(model, tensor.name, np.array([1, 1, 5 / 3, 5 / 3], np.float32))
            naive += 1
    assert naive > 0
    _assert_refused(model, tmp_path, "ONNX Runtime")


def test_anchors_that_do_not_match_the_heads_are_refused(fixture_model, tmp_path):
    _, converted, _ = fixture_model("d0_hard")
    model = create_onnx.build_graph(converted)
    anchors = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "nms/anchors:0")
    _set_initializer(model, "nms/anchors:0", anchors[:, :-9])
    _assert_refused(model, tmp_path, "anchors")


def test_a_good_graph_passes_and_is_written(fixture_model, tmp_path):
    _, converted, reference = fixture_model("lite0_320")
    target = tmp_path / "model.onnx"
    write_checked_onnx(str(target), create_onnx.build_graph(converted, input_shape="1,3,320,320"))
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
