"""build_engine.py: the CPU half (FP16 graph, argument checks) for real, TensorRT builds where possible."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from helpers import as_input, matched_fraction, per_image
from test_tensorrt_runner import gpu_available, needs_tensorrt_gpu

from efficientdet_trt.engine.tensorrt_runner import TensorRTRunner
from efficientdet_trt.run.onnx_runner import OnnxCpuRunner


def run_build(*args):
    return subprocess.run([sys.executable, str(ROOT / "build_engine.py"), *args], capture_output=True, text=True)


def test_save_onnx_alone_writes_the_fp16_graph_without_tensorrt(d0_onnx, fixture_model, tmp_path):
    _, _, reference = fixture_model("d0_hard")
    fp16_path = tmp_path / "d0-fp16.onnx"
    result = run_build("--onnx", str(d0_onnx), "--precision", "fp16", "--save_onnx", str(fp16_path))
    assert result.returncode == 0, result.stderr[-2000:]
    halves = sum(1 for i in onnx.load(str(fp16_path)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    assert halves > 100
    with OnnxCpuRunner(str(fp16_path)) as fp16, OnnxCpuRunner(str(d0_onnx)) as fp32:
        feed = {"input": as_input(reference.images[:3], "NHWC")}
        got, want = fp16.infer(feed), fp32.infer(feed)
        for row in range(3):
            assert matched_fraction(per_image(want, row), per_image(got, row), 0.95, None)[0] >= 0.98


@pytest.mark.parametrize("args,fragment", [
    ([], "give --engine"),
    (["--engine", "x.engine", "--dynamic_batch_size", "4,2,8"], "MIN,OPT,MAX"),
    (["--engine", "x.engine", "--batch_size", "0"], "--batch_size"),
    (["--engine", "x.engine", "--precision", "int8", "--calib_input", ".", "--calib_batch_size", "0"],
     "--calib_batch_size: must be at least 1"),
    (["--engine", "x.engine", "--workspace", "0"], "--workspace: must be more than 0"),
    (["--engine", "/proc/x.engine"], "/proc/x.engine: cannot write"),
    (["--save_onnx", "/no/such/folder/x.onnx"], "does not exist"),
    (["--engine", "x.engine", "--precision", "int8", "--calib_input", "tests", "--calib_cache", "/proc/c.cache"],
     "/proc/c.cache"),
])
def test_argument_errors(d0_onnx, args, fragment):
    result = run_build("--onnx", str(d0_onnx), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1]


def test_missing_onnx(tmp_path):
    result = run_build("--onnx", str(tmp_path / "none.onnx"), "--engine", str(tmp_path / "x.engine"))
    assert result.returncode == 2 and "none.onnx" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(gpu_available(), reason="checks the refusal on machines without a GPU")
def test_without_tensorrt_or_a_gpu_building_is_refused_cleanly(d0_onnx, tmp_path):
    result = run_build("--onnx", str(d0_onnx), "--engine", str(tmp_path / "x.engine"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = result.stderr.strip().splitlines()[-1]
    assert any(reason in said for reason in ("TensorRT is not installed", "no CUDA device found", "CUDA Python bindings"))
    assert not (tmp_path / "x.engine").exists()


@needs_tensorrt_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_built_engines_match_the_cpu_reference(d0_onnx, fixture_model, tmp_path, precision):
    _, _, reference = fixture_model("d0_hard")
    engine = tmp_path / f"d0-{precision}.engine"
    cache = tmp_path / "timing.cache"
    result = run_build("--onnx", str(d0_onnx), "--engine", str(engine), "--precision", precision,
                       "--dynamic_batch_size", "1,4,8", "--timing_cache", str(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    assert cache.stat().st_size > 0
    matched = total = 0
    with TensorRTRunner(str(engine)) as gpu, OnnxCpuRunner(str(d0_onnx)) as cpu:
        for size in (1, 7):
            feed = {"input": as_input([reference.images[i % 8] for i in range(size)], "NHWC")}
            ours, want = gpu.infer(feed), cpu.infer(feed)
            assert np.all(ours["detection_scores"] >= 0)  # FP16 NMS would give negative scores
            for row in range(size):
                fraction, count = matched_fraction(per_image(want, row), per_image(ours, row), 0.95, None)
                matched += round(fraction * count)
                total += count
    assert matched / total >= (0.99 if precision == "fp32" else 0.98)


def test_int8_without_images_or_cache_is_a_clear_error(d0_onnx, tmp_path):
    result = run_build("--onnx", str(d0_onnx), "--engine", str(tmp_path / "x.engine"), "--precision", "int8")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--calib_input" in result.stderr and "--calib_cache" in result.stderr


def test_int8_with_fewer_images_than_a_batch_is_a_clear_error(d0_onnx, tmp_path):
    from synthetic_images import write_images

    write_images(str(tmp_path / "calib"), 3, 64, 64)
    result = run_build("--onnx", str(d0_onnx), "--engine", str(tmp_path / "x.engine"), "--precision", "mixed",
                       "--calib_input", str(tmp_path / "calib"), "--calib_batch_size", "8")
    assert result.returncode == 2 and "fewer images than one batch of 8" in result.stderr


def test_corrupt_calibration_cache_is_a_clear_error(d0_onnx, tmp_path):
    cache = tmp_path / "calib.cache"
    cache.write_text("not a cache\n")
    result = run_build("--onnx", str(d0_onnx), "--engine", str(tmp_path / "x.engine"), "--precision", "int8",
                       "--calib_cache", str(cache))
    assert result.returncode == 2 and "not a TensorRT entropy or min-max calibration cache" in result.stderr
    assert cache.read_text() == "not a cache\n"


@needs_tensorrt_gpu
def test_int8_calibration_cache_round_trip(d0_onnx, fixture_model, tmp_path):
    """A second build with the cache reads no images and gives the same cache."""
    from synthetic_images import write_images

    write_images(str(tmp_path / "calib"), 16, 256, 256)
    cache = tmp_path / "calib.cache"
    first = run_build("--onnx", str(d0_onnx), "--engine", str(tmp_path / "a.engine"), "--precision", "int8",
                      "--calib_input", str(tmp_path / "calib"), "--calib_cache", str(cache), "--calib_batch_size", "4")
    assert first.returncode == 0, first.stderr[-3000:]
    written = cache.read_text()
    second = run_build("--onnx", str(d0_onnx), "--engine", str(tmp_path / "b.engine"), "--precision", "int8",
                       "--calib_input", str(tmp_path / "missing"), "--calib_cache", str(cache))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "calibration: " not in second.stderr and cache.read_text() == written


def test_an_output_that_is_the_input_onnx_is_refused(d0_onnx):
    before = d0_onnx.read_bytes()
    result = run_build("--onnx", str(d0_onnx), "--precision", "fp16", "--save_onnx", str(d0_onnx))
    assert result.returncode == 2 and "would be overwritten" in result.stderr.strip().splitlines()[-1]
    assert d0_onnx.read_bytes() == before


def test_an_already_converted_graph_is_a_clear_error(d0_onnx, tmp_path):
    """The float16 graph --save_onnx wrote, given back as input: one line, not onnxconverter's ValueError."""
    from efficientdet_trt.precision.fp16 import to_fp16

    fp16 = tmp_path / "d0-fp16.onnx"
    onnx.save(to_fp16(onnx.load(str(d0_onnx))), str(fp16))
    result = run_build("--onnx", str(fp16), "--precision", "fp16", "--save_onnx", str(tmp_path / "again.onnx"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "d0-fp16.onnx" in last and "already a float16 graph" in last and "--precision fp32" in last
    assert not (tmp_path / "again.onnx").exists()
