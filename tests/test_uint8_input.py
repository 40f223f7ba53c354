"""create_onnx.py --input_dtype uint8: the cast inside the graph, uint8 batches, and detections equal to float32's."""

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT, input_hw
from helpers import coco_annotation, matched_fraction, per_image, save_and_open
from synthetic_images import make_labelled_image, write_images

from efficientdet_trt.convert import pipeline
from efficientdet_trt.precision import quantize
from efficientdet_trt.precision.fp16 import to_fp16
from efficientdet_trt.run.onnx_runner import OnnxCpuRunner, onnx_input_dtype
from image_batcher import ImageBatcher

FIXTURES = ["d0_trained", "lite0_trained"]
NUM_IMAGES = 16


def _batches(folder, hw, layout, dtype):
    """Every image of `folder` as one batch of `dtype` (AutoML's preprocessing: resize and mean padding)."""
    batcher = ImageBatcher(str(folder), hw, layout, NUM_IMAGES, dtype, exact_batches=True)
    return next(iter(batcher))[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Photos of another size and shape than the inputs, so the batcher resizes and pads them."""
    folder = tmp_path_factory.mktemp("uint8-images")
    write_images(str(folder), NUM_IMAGES, 200, 150, seed=4000, ext="jpg")
    return folder


def _matched(ours, theirs, count, min_iou=0.999, max_score_delta=1e-3):
    matched = total = 0
    for index in range(count):
        fraction, found = matched_fraction(per_image(theirs, index), per_image(ours, index), min_iou, max_score_delta)
        matched += round(fraction * found)
        total += found
    return matched, total


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_uint8_graph_equals_float32_graph(fixture, layout, fixture_model, images, work_dir):
    _, converted, _ = fixture_model(fixture)
    hw = input_hw(fixture)
    runners = {}
    for dtype in ("float32", "uint8"):
        model = pipeline.build_graph(converted, pipeline.GraphOptions(input_format=layout, input_dtype=dtype))
        assert onnx_input_dtype(model) == np.dtype(dtype)
        runners[dtype] = save_and_open(model, work_dir / f"{fixture}-{layout}-{dtype}.onnx")
        assert runners[dtype].input_spec().dtype == np.dtype(dtype)
    pixels = _batches(images, hw, layout, np.uint8)
    assert pixels.dtype == np.uint8
    # The same pixels: the cast in the graph gives exactly the floats the float32 graph is fed.
    same_float, same_uint8 = runners["float32"].infer({"input": pixels.astype(np.float32)}), \
        runners["uint8"].infer({"input": pixels})
    for name, value in same_float.items():
        assert np.array_equal(value, same_uint8[name]), name
    # Each graph fed by the batcher in its own type: uint8 rounds the resized pixels to integers (up to 0.5
    # apart), a real change of input that moves boxes and scores a little. Measured (16 images): D0 45/45
    # within IoU 0.99 and 0.01 (33/45 within 0.999 and 1e-3), Lite0 54/56 (11/56), 56/56 within 0.5 and 0.1.
    ours = runners["uint8"].infer({"input": pixels})
    theirs = runners["float32"].infer({"input": _batches(images, hw, layout, np.float32)})
    assert ours["num_detections"].tolist() == theirs["num_detections"].tolist()
    close, total = _matched(ours, theirs, NUM_IMAGES, min_iou=0.99, max_score_delta=1e-2)
    loose, _ = _matched(ours, theirs, NUM_IMAGES, min_iou=0.5, max_score_delta=0.1)
    print(f"{fixture} {layout}: uint8 batches vs float32 batches {close}/{total} within IoU 0.99 and 0.01, "
          f"{loose}/{total} within 0.5 and 0.1")
    assert total >= NUM_IMAGES and close / total >= 0.95 and loose == total


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_uint8_fp16_and_int8_graphs_equal_float32_ones(variant, fixture_model, images, work_dir, tmp_path):
    fixture = "d0_trained"
    _, converted, _ = fixture_model(fixture)
    hw = input_hw(fixture)
    cache = tmp_path / "calibration.cache"
    runners = {}
    for dtype in ("uint8", "float32"):
        model = pipeline.build_graph(converted, pipeline.GraphOptions(input_dtype=dtype))
        if variant == "fp16":
            model = to_fp16(model)
        else:
            # Calibrated once, on uint8 batches; the float32 graph reuses that cache (the same tensors).
            batcher = ImageBatcher(str(images), hw, "NHWC", 8, onnx_input_dtype(model), exact_batches=True)
            model = quantize.to_int8(model, False, batcher if dtype == "uint8" else None, str(cache))
        assert onnx_input_dtype(model) == np.dtype(dtype)
        runners[dtype] = save_and_open(model, work_dir / f"{fixture}-{variant}-{dtype}.onnx")
    pixels = _batches(images, hw, "NHWC", np.uint8)
    ours = runners["uint8"].infer({"input": pixels})
    theirs = runners["float32"].infer({"input": pixels.astype(np.float32)})
    matched, total = _matched(ours, theirs, NUM_IMAGES)
    print(f"{fixture} {variant}: uint8 graph vs float32 graph {matched}/{total}")
    assert total >= NUM_IMAGES and matched / total >= 0.999


def test_create_onnx_cli_writes_a_uint8_graph_that_infer_runs(fixture_model, images, tmp_path):
    path, _, _ = fixture_model("d0_trained")
    output = tmp_path / "uint8.onnx"
    result = subprocess.run([sys.executable, str(ROOT / "create_onnx.py"), "--saved_model", path, "--onnx",
                             str(output), "--input_dtype", "uint8", "--input_format", "NCHW"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    model = onnx.load(str(output))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [node.op_type for node in model.graph.node][:1] == ["Cast"]
    results = tmp_path / "results"
    result = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--onnx", str(output), "--input", str(images),
                             "--output", str(results)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(p.name for p in results.iterdir() if p.suffix == ".txt")
    assert len(written) == NUM_IMAGES
    runner = OnnxCpuRunner(str(output)).activate()
    assert runner.input_spec().dtype == np.uint8 and runner.input_layout == "NCHW"


def test_build_engine_calibrates_a_uint8_graph_without_tensorrt(fixture_model, images, tmp_path):
    """build_engine.py --save_onnx (no engine, no TensorRT): INT8 calibration reads uint8 batches for a uint8
    graph; the Q/DQ graph it writes keeps the uint8 input and equals the float32 graph quantized with the
    cache that calibration wrote."""
    _, converted, _ = fixture_model("d0_trained")
    source = tmp_path / "uint8.onnx"
    onnx.save(pipeline.build_graph(converted, pipeline.GraphOptions(input_dtype="uint8")), str(source))
    written, cache = tmp_path / "uint8-int8.onnx", tmp_path / "calibration.cache"
    result = subprocess.run([sys.executable, str(ROOT / "build_engine.py"), "--onnx", str(source), "--precision",
                             "int8", "--calib_input", str(images), "--calib_batch_size", "8", "--calib_cache",
                             str(cache), "--save_onnx", str(written)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert cache.is_file()
    ours = OnnxCpuRunner(str(written)).activate()
    assert ours.input_spec().dtype == np.uint8
    float_int8 = quantize.to_int8(pipeline.build_graph(converted), False, None, str(cache))
    theirs = save_and_open(float_int8, tmp_path / "float32-int8.onnx")
    pixels = _batches(images, input_hw("d0_trained"), "NHWC", np.uint8)
    mine, reference = ours.infer({"input": pixels}), theirs.infer({"input": pixels.astype(np.float32)})
    assert int(mine["num_detections"].sum()) >= NUM_IMAGES
    for name, value in reference.items():
        assert np.array_equal(mine[name], value), name


def test_eval_coco_gives_a_uint8_graph_the_float32_graphs_numbers(fixture_model, tmp_path):
    """eval_coco.py on a uint8 graph: on images at the model's size (nothing resized, so both graphs are fed the
    same integer pixels) it writes the float32 graph's results file and prints its COCO numbers, exactly."""
    _, converted, _ = fixture_model("d0_trained")
    height, width = input_hw("d0_trained")
    folder = tmp_path / "images"
    folder.mkdir()
    images, annotations = [], []
    for index in range(8):
        image, boxes, classes = make_labelled_image(width, height, seed=4100 + index)
        image.save(folder / f"shapes_{index}.png")
        images.append({"id": index + 1, "file_name": f"shapes_{index}.png", "width": width, "height": height})
        for box, category in zip(boxes, classes):  # 1 rectangle, 2 ellipse: class + 1
            coco_annotation(annotations, index + 1, category, box)
    truth = tmp_path / "instances.json"
    truth.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"}]}))
    printed, written = {}, {}
    for dtype in ("float32", "uint8"):
        model = pipeline.build_graph(converted, pipeline.GraphOptions(input_dtype=dtype))
        onnx.save(model, str(tmp_path / f"{dtype}.onnx"))
        results = tmp_path / f"{dtype}.json"
        result = subprocess.run([sys.executable, str(ROOT / "eval_coco.py"), "--onnx", str(tmp_path / f"{dtype}.onnx"),
                                 "--input", str(folder), "--annotations", str(truth), "--results", str(results),
                                 "--batch_size", "4"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        printed[dtype] = [float(v) for v in re.findall(r"= (-?\d+\.\d+)", result.stdout)]
        written[dtype] = json.loads(results.read_text())
    print(f"eval_coco on d0_trained, float32 and uint8 graphs: {printed['uint8'][:3]} (AP, AP50, AP75)")
    assert len(printed["uint8"]) == 12 and printed["uint8"][1] >= 0.5  # AP50: the model finds the shapes
    assert printed["uint8"] == printed["float32"]
    assert written["uint8"] == written["float32"] and len(written["uint8"]) >= 8
