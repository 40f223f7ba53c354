"""FP16 graphs made on the CPU (what TensorRT 11.x builds) against the FP32 graph."""

import numpy as np
import onnx
import pytest
from helpers import as_input, matched_fraction, per_image, save_and_open

from efficientdet_trt.convert import pipeline
from efficientdet_trt.convert.graph_surgery import PLUGIN_OPS
from efficientdet_trt.precision.fp16 import to_fp16


# The random fixtures fill all 100 output slots with near-ties, so FP16's ~1e-3
# relative precision moves the top-100 cut and flips a few NMS decisions:
# measured 795/800 on D0 and 782/800 (97.8%) on Lite0, where 16 of the 18 lost
# detections score within 0.01 of the image's 100th. The trained fixtures' few
# confident detections all survive (33/33 each).
@pytest.mark.parametrize("fixture,legacy,required", [("d0_hard", False, 0.98), ("lite0_hard", False, 0.96),
                                                     ("d0_hard", True, 0.98), ("d0_trained", False, 0.98),
                                                     ("lite0_trained", False, 0.98)])
def test_fp16_graph_matches_fp32(fixture, legacy, required, fixture_model, work_dir):
    _, converted, reference = fixture_model(fixture)
    fp32_model = pipeline.build_graph(converted, pipeline.GraphOptions(legacy_plugins=legacy))
    fp16_model = to_fp16(fp32_model)
    tag = f"{fixture}-{'legacy' if legacy else 'efficient'}"
    fp32 = save_and_open(fp32_model, work_dir / f"{tag}-fp32.onnx")
    fp16 = save_and_open(fp16_model, work_dir / f"{tag}-fp16.onnx")

    graph = onnx.shape_inference.infer_shapes(fp16_model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    nms = [n for n in graph.node if n.op_type in PLUGIN_OPS][0]
    assert all(types[name] == onnx.TensorProto.FLOAT for name in nms.input)  # the plugin sees float32 only
    assert [o.name for o in graph.output] == list(create_onnx_outputs())
    assert types["detection_scores"] == onnx.TensorProto.FLOAT and types["detection_boxes"] == onnx.TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = sum(1 for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    assert halves > 100  # the convolution weights really are float16

    matched = total = 0
    for start in range(0, len(reference.images), 4):
        feed = {"input": as_input(reference.images[start:start + 4], "NHWC")}
        want, got = fp32.infer(feed), fp16.infer(feed)
        assert got["detection_scores"].dtype == np.float32 and got["num_detections"].dtype == np.int32
        for row in range(len(feed["input"])):
            fraction, count = matched_fraction(per_image(want, row), per_image(got, row), 0.95, None)
            matched += round(fraction * count)
            total += count
    print(f"{tag}: FP16 matches {matched}/{total} FP32 detections (IoU >= 0.95, same class)")
    assert matched / total >= required


def create_onnx_outputs():
    return ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
