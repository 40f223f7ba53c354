"""INT8 Q/DQ graphs made on the CPU (what TensorRT 11.x builds): structure, accuracy, calibration cache."""

import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import ROOT, TRAINED_FIXTURES, input_hw
from helpers import ap_against_reference, per_image, save_and_open
from synthetic_images import write_images

from efficientdet_trt.convert import pipeline
from efficientdet_trt.core.common import UserError
from efficientdet_trt.precision import calibration, quantize
from efficientdet_trt.precision.fp16 import to_fp16
from image_batcher import NVIDIA, ImageBatcher, Preprocessing

NUM_EVAL_IMAGES = 32
# The README's precision table was measured with NVIDIA's preprocessing. On the trained
# fixtures (images of the input's size) both methods give the same pixels; on the random D0
# (320x240 images), whose 100 near-tied detections per image move with any change of input,
# AutoML's gave FP16 0.979, mixed 0.64, INT8 0.56 (NVIDIA's: 0.99, 0.65, 0.57).
PREPROCESSING = Preprocessing.for_model(NVIDIA)


def _image_size(name):
    """(width, height) of the calibration and evaluation images of fixture `name`.

    The random D0 gets images of another shape than its input (the batcher
    resizes them); the trained models see square images like those they were
    trained on (users calibrate on their own kind of data).
    """
    height, width = input_hw(name)
    return (width, height) if name in TRAINED_FIXTURES else (320, 240)


def _quantized(fixture_model, folder, name):
    """(fp32 model, image folder, cache path, int8 model, mixed model) of fixture `name`."""
    _, converted, _ = fixture_model(name)
    model = pipeline.build_graph(converted)
    width, height = _image_size(name)
    write_images(str(folder / "calib"), 32, width, height, seed=1000, ext="jpg")
    write_images(str(folder / "eval"), NUM_EVAL_IMAGES, width, height, seed=0, ext="jpg")
    cache = folder / f"{name}.cache"
    batcher = ImageBatcher(str(folder / "calib"), input_hw(name), "NHWC", 8, exact_batches=True, shuffle=True,
                           preprocessing=PREPROCESSING)
    int8 = quantize.to_int8(model, False, batcher, str(cache))
    mixed = quantize.to_int8(model, True, None, str(cache))
    return model, folder, cache, int8, mixed


@pytest.fixture(scope="module")
def quantized(fixture_model, tmp_path_factory):
    """quantized(name) -> _quantized(...) of fixture `name`, made once per module."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = _quantized(fixture_model, tmp_path_factory.mktemp(f"quantize-{name}"), name)
        return made[name]

    return get


@pytest.fixture(scope="module")
def d0(quantized):
    """The random-weight D0, quantized."""
    return quantized("d0_hard")


def _producer(tensor):
    return tensor.inputs[0] if tensor.inputs else None


@pytest.mark.parametrize("half", [True, False])
def test_every_conv_has_int8_inputs_and_per_channel_int8_weights(d0, half):
    model, _, cache, int8, _ = d0
    if not half:
        int8 = quantize.to_int8(model, False, None, str(cache), fp16=False)
    float_type = np.float16 if half else np.float32
    base = to_fp16(model) if half else model
    original = {node.name: node for node in gs.import_onnx(base).nodes if node.op == "Conv"}
    assert {o.domain: o.version for o in int8.opset_import}[""] == (19 if half else 13)
    graph = gs.import_onnx(int8)
    convs = [node for node in graph.nodes if node.op == "Conv"]
    assert len(convs) == len(original) > 200
    for conv in convs:
        dq = _producer(conv.inputs[0])
        assert dq is not None and dq.op == "DequantizeLinear", conv.name
        q = _producer(dq.inputs[0])
        assert q.op == "QuantizeLinear" and q.inputs[1] is dq.inputs[1]
        scale, zero = q.inputs[1].values, q.inputs[2].values
        assert scale.dtype == float_type and scale.shape == () and scale > 0
        assert zero.dtype == np.int8 and zero == 0  # symmetric, signed: what TensorRT accepts

        wdq = _producer(conv.inputs[1])
        assert wdq.op == "DequantizeLinear" and wdq.attrs["axis"] == 0
        stored, scales = wdq.inputs[0].values, wdq.inputs[1].values
        assert stored.dtype == np.int8 and stored.min() >= -127 and scales.shape == (stored.shape[0],)
        assert scales.dtype == float_type and not np.any(wdq.inputs[2].values)
        shape = (-1,) + (1,) * (stored.ndim - 1)
        weights = original[conv.name].inputs[1].values.astype(np.float32)
        restored = stored.astype(np.float32) * scales.astype(np.float32).reshape(shape)
        assert np.all(np.abs(restored - weights) <= scales.astype(np.float32).reshape(shape) * 0.5001)
        peaks = np.abs(stored.reshape(len(stored), -1)).max(axis=1)
        assert np.all(peaks >= 126)  # each channel's largest weight maps to ~127 (±1 for the scale's rounding)


def test_mixed_keeps_the_stem_and_first_three_blocks_out_of_int8(d0):
    _, _, _, _, mixed = d0
    graph = gs.import_onnx(mixed)
    kept = [n for n in graph.nodes if n.op == "Conv" and _producer(n.inputs[1]) is None]
    quantized = [n for n in graph.nodes if n.op == "Conv" and _producer(n.inputs[1]) is not None]
    assert kept and quantized
    assert all(any(scope in n.name for scope in quantize.MIXED_KEPT_SCOPES) for n in kept)
    assert not any(any(scope in n.name for scope in quantize.MIXED_KEPT_SCOPES) for n in quantized)
    assert {n.name.split("/")[1] for n in kept} == {"stem", "blocks_0", "blocks_1", "blocks_2"}


def test_nms_and_outputs_stay_float(d0):
    _, _, _, int8, _ = d0
    graph = gs.import_onnx(int8)
    nms = [n for n in graph.nodes if n.op == "EfficientNMS_TRT"][0]
    assert all(_producer(t) is None or _producer(t).op != "DequantizeLinear" for t in nms.inputs)
    assert all(t.dtype == np.float32 for t in nms.inputs)
    assert [t.name for t in graph.outputs] == ["num_detections", "detection_boxes", "detection_scores",
                                               "detection_classes"]


# Measured (AP@[.5:.95] against the FP32 graph's detections, 32 images; relative
# RMS error of the pre-NMS heads), the rest of the graph in FP16:
#   random-weight D0: INT8 0.57, mixed 0.65, FP16 0.99; heads 8.5% / 6% / 0.1%
#   trained D0:       INT8 0.93, mixed 0.99, FP16 1.00; heads 11% / 8% / 0.2%
#   trained Lite0:    INT8 0.93, mixed 0.96, FP16 1.00; heads 10% / 5% / 0.1%
# The acceptance (INT8 >= 0.8) holds on the trained models. Random
# networks amplify per-layer rounding noise (NVIDIA's ModelOpt gets 0.70 on the
# random D0), and so does a briefly trained one: after 400 steps instead of
# 1600 (at 256x256) the same D0 gave INT8 0.37 (ModelOpt 0.38).
ACCURACY = {"d0_hard": dict(int8=0.5, head_error=0.12), "d0_trained": dict(int8=0.8, head_error=0.2),
            "lite0_trained": dict(int8=0.8, head_error=0.2)}


@pytest.mark.parametrize("name", list(ACCURACY))
def test_int8_and_mixed_accuracy_against_fp32(name, quantized, tmp_path):
    """COCO AP of the Q/DQ graphs with the FP32 graph's detections as ground truth, 32 images."""
    model, folder, _, int8, mixed = quantized(name)
    runners = {kind: save_and_open(m, tmp_path / f"{kind}.onnx")
               for kind, m in (("fp32", model), ("int8", int8), ("mixed", mixed),
                               ("fp16", to_fp16(model)))}
    found = {kind: [] for kind in runners}
    head_error = {kind: [] for kind in runners}
    for batch, infos in ImageBatcher(str(folder / "eval"), input_hw(name), "NHWC", 8, preprocessing=PREPROCESSING):
        raw = {kind: runner.infer_raw({"input": batch}) for kind, runner in runners.items()}
        for kind, runner in runners.items():
            outputs = runner.infer({"input": batch})
            found[kind] += [per_image(outputs, row) for row in range(len(infos))]
            for want, got in zip(raw["fp32"].values(), raw[kind].values()):
                head_error[kind].append(np.sqrt(np.mean((want - got) ** 2)) / want.std())
    assert len(found["fp32"]) == NUM_EVAL_IMAGES
    ap = {kind: ap_against_reference(found["fp32"], found[kind]) for kind in ("int8", "mixed", "fp16")}
    error = {kind: float(np.mean(head_error[kind])) for kind in ("int8", "mixed", "fp16")}
    print(f"{name}: AP vs FP32 on {NUM_EVAL_IMAGES} images: {ap}; relative RMS error of the heads: {error}")
    assert error["fp16"] < error["mixed"] < error["int8"] < ACCURACY[name]["head_error"]
    assert ap["int8"] >= ACCURACY[name]["int8"]  # thresholds that clipped 2-12% of ReLU outputs gave 0.02 on Lite0
    assert ap["int8"] - 0.02 <= ap["mixed"] <= ap["fp16"]
    assert ap["fp16"] >= 0.98


def run_build(*args):
    return subprocess.run([sys.executable, str(ROOT / "build_engine.py"), *args], capture_output=True, text=True)


def test_cache_round_trip_gives_identical_qdq_graph_without_images(d0, tmp_path):
    model, folder, _, _, _ = d0
    onnx_path = tmp_path / "d0.onnx"
    onnx.save(model, str(onnx_path))
    calib = tmp_path / "calib"
    write_images(str(calib), 8, 320, 240, seed=2000, ext="jpg")
    cache = tmp_path / "int8.cache"
    first = run_build("--onnx", str(onnx_path), "--precision", "int8", "--calib_input", str(calib),
                      "--calib_cache", str(cache), "--calib_batch_size", "4", "--save_onnx", str(tmp_path / "a.onnx"))
    assert first.returncode == 0, first.stderr[-3000:]
    written = cache.read_text()
    assert written.startswith("TRT-") and len(calibration.read_cache(str(cache))) > 200
    for image in calib.iterdir():
        image.unlink()
    calib.rmdir()  # the second build must not need the images
    second = run_build("--onnx", str(onnx_path), "--precision", "int8", "--calib_input", str(calib),
                       "--calib_cache", str(cache), "--save_onnx", str(tmp_path / "b.onnx"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "no calibration images read" in second.stderr
    assert cache.read_text() == written
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_cache_of_another_graph_is_a_clear_error(d0, tmp_path):
    model, _, _, _, _ = d0
    onnx_path = tmp_path / "d0.onnx"
    onnx.save(model, str(onnx_path))
    cache = tmp_path / "other.cache"
    calibration.write_cache(str(cache), {"some/other/tensor:0": 0.01})
    result = run_build("--onnx", str(onnx_path), "--precision", "mixed", "--calib_cache", str(cache),
                       "--save_onnx", str(tmp_path / "q.onnx"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "other.cache" in result.stderr and "delete it to recalibrate" in result.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_a_tensorrt_cache_with_more_tensors_serves_too(d0, tmp_path):
    model, _, cache, int8, _ = d0
    scales = calibration.read_cache(str(cache))
    bigger = tmp_path / "trt10.cache"
    calibration.write_cache(str(bigger), {"(Unnamed Layer* 3) [Shuffle]_output": 0.5, **scales}, version="100100")
    assert quantize.to_int8(model, False, None, str(bigger)).SerializeToString() == int8.SerializeToString()


def test_minmax_scale_of_the_stem_input_is_its_largest_normalised_value(d0, tmp_path):
    model, folder, _, _, _ = d0
    graph = gs.import_onnx(model)
    sub = [n for n in graph.nodes if n.op == "Sub" and n.inputs[0].name == "input"][0]
    mul = sub.outputs[0].outputs[0]
    mean, inv_std = sub.inputs[1].values, mul.inputs[1].values
    batches = [batch.copy() for batch, _ in ImageBatcher(str(folder / "calib"), input_hw("d0_hard"), "NHWC", 8,
                                                         exact_batches=True, shuffle=True)]
    peak = max(float(np.abs((batch - mean) * inv_std).max()) for batch in batches)
    cache = tmp_path / "minmax.cache"
    batcher = ImageBatcher(str(folder / "calib"), input_hw("d0_hard"), "NHWC", 8, exact_batches=True, shuffle=True)
    quantize.to_int8(model, False, batcher, str(cache), method="minmax")
    stem = [n for n in graph.nodes if n.op == "Conv" and "/stem/" in n.name][0]
    assert calibration.read_cache(str(cache), "minmax")[stem.inputs[0].name] == pytest.approx(peak / 127, rel=1e-5)


def test_int8_needs_images_or_a_cache(d0):
    model = d0[0]
    with pytest.raises(UserError, match="--calib_input"):
        quantize.to_int8(model, False, None, None)


def test_an_already_quantized_graph_is_refused(d0):
    with pytest.raises(UserError, match="already has QuantizeLinear"):
        quantize.to_int8(d0[3], False, None, str(d0[2]))


def test_float16_scales_never_round_to_zero():
    weights = np.zeros((3, 2, 1, 1), np.float32)
    weights[0] = 1e-9  # far below float16's smallest number
    weights[1] = 0.5
    scales = quantize.weight_scales(weights, np.float16)
    assert scales.dtype == np.float16 and np.all(scales > 0)
    stored = quantize.quantize_weights(weights, scales)
    assert stored[1].max() == 127 and stored[0].max() == 0 and scales[2] == 1
