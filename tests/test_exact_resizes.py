"""Resize nodes made exact: the sizes and source pixels of TensorFlow's nearest-neighbour upsampling."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from efficientdet_trt.convert import graph_surgery

# (input H, W) -> (output H, W): pyramid steps that halve evenly, that do not (Lite0 at 320:
# P7 3x3 -> P6 5x5; D0 at 640x320: 3x5 -> 5x10), and ratios no float32 scale
# reproduces (6 -> 10, 14 -> 22), which become Gathers.
CASES = [((5, 5), (10, 10)), ((3, 3), (5, 5)), ((3, 5), (5, 10)), ((3, 5), (6, 10)), ((8, 5), (16, 10)),
         ((38, 63), (75, 125)),
         ((6, 14), (10, 22))]


def _resize_graph(in_hw, out_hw):
    """A one-Resize ONNX graph as tf2onnx writes AutoML's upsampling (nearest, asymmetric, floor, sizes)."""
    x = gs.Variable("x", dtype=np.float32, shape=[2, 3, *in_hw])
    y = gs.Variable("y", dtype=np.float32)
    empty = gs.Constant("empty", np.array([], np.float32))
    sizes = gs.Constant("sizes", np.array([2, 3, *out_hw], np.int64))
    node = gs.Node("Resize", "upsample", attrs={"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                                "nearest_mode": "floor"}, inputs=[x, empty, empty, sizes], outputs=[y])
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=13)
    return graph_surgery.infer_shapes(graph)


@pytest.mark.parametrize("in_hw,out_hw", CASES)
def test_resize_equals_tensorflow(in_hw, out_hw):
    import tensorflow as tf

    graph = _resize_graph(in_hw, out_hw)
    graph_surgery.make_resizes_exact(graph)
    ops = [node.op for node in graph.nodes]
    resizes = [node for node in graph.nodes if node.op == "Resize"]
    for node in resizes:
        assert len(node.inputs) == 3 and isinstance(node.inputs[2], gs.Constant)  # constant scales only
    exact_scales = all(graph_surgery.proven_resize_scale(i, o) for i, o in zip(in_hw, out_hw))
    assert ops.count("Gather") == (0 if exact_scales else sum(i != o for i, o in zip(in_hw, out_hw)))
    model = gs.export_onnx(graph)
    onnx.checker.check_model(model)
    data = np.random.default_rng(0).normal(size=(2, 3, *in_hw)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"x": data})[0]
    theirs = tf.compat.v1.image.resize_nearest_neighbor(data.transpose(0, 2, 3, 1), out_hw).numpy()
    assert ours.shape == (2, 3, *out_hw)
    assert np.array_equal(ours, theirs.transpose(0, 3, 1, 2))


def test_float32_out_over_in_is_one_row_short_and_the_proven_scale_is_not():
    """The bug this fixes: 3 * float32(5/3) is 4.9999998 in float64 (as ONNX Runtime multiplies), so 4 rows."""
    naive = np.float32(5) / np.float32(3)
    assert int(np.floor(3 * float(naive))) == 4
    proven = np.float32(graph_surgery.proven_resize_scale(3, 5))
    assert int(np.floor(3 * float(proven))) == 5 and int(np.floor(np.float32(3) * proven)) == 5
    assert np.array_equal(np.floor(np.arange(5, dtype=np.float32) / proven), [0, 0, 1, 1, 2])


def test_every_pyramid_step_has_a_proven_scale():
    """AutoML's levels are ceil(size / 2) of the one below, so upsampling is in -> 2 * in or 2 * in - 1."""
    for out_size in range(2, 2000):
        assert graph_surgery.proven_resize_scale((out_size + 1) // 2, out_size) is not None, out_size
