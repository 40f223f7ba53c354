"""The TensorRT runner: real builds and runs where TensorRT and a GPU exist, clean refusals where not."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from helpers import as_input, matched_fraction, per_image

from efficientdet_trt.convert import pipeline
from efficientdet_trt.core.common import UserError
from efficientdet_trt.engine import cuda_memory
from efficientdet_trt.engine.tensorrt_runner import TensorRTRunner
from efficientdet_trt.run.onnx_runner import OnnxCpuRunner


def gpu_available():
    try:
        return cuda_memory.load_cuda().device_count() > 0
    except UserError:
        return False


def tensorrt_available():
    try:
        import tensorrt  # noqa: F401

        return hasattr(tensorrt, "Builder")
    except ImportError:
        return False


needs_tensorrt_gpu = pytest.mark.skipif(
    not (tensorrt_available() and gpu_available()),
    reason=f"needs TensorRT with its builder ({'found' if tensorrt_available() else 'not installed'}) "
           f"and a CUDA GPU ({'found' if gpu_available() else 'none on this machine'})")


def build_engine_with_tensorrt(onnx_path, engine_path, batch_range):
    """An FP32 engine with a batch profile, built by build_engine.py."""
    result = subprocess.run([sys.executable, str(ROOT / "build_engine.py"), "--onnx", str(onnx_path), "--engine",
                             str(engine_path), "--precision", "fp32", "--dynamic_batch_size",
                             ",".join(str(b) for b in batch_range)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@needs_tensorrt_gpu
@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_engine_matches_cpu_reference(fixture_model, work_dir, use_cuda_graph):
    _, converted, reference = fixture_model("d0_hard")
    onnx_path = work_dir / "trt-d0.onnx"
    onnx.save(pipeline.build_graph(converted), str(onnx_path))
    engine_path = work_dir / "trt-d0.engine"
    if not engine_path.exists():
        build_engine_with_tensorrt(str(onnx_path), str(engine_path), (1, 4, 8))
    cpu = OnnxCpuRunner(str(onnx_path)).activate()
    matched = total = 0
    with TensorRTRunner(str(engine_path), use_cuda_graph=use_cuda_graph) as gpu:
        assert gpu.input_layout == "NHWC" and gpu.fixed_batch is None
        for size in (1, 4, 7):
            images = [reference.images[i % len(reference.images)] for i in range(size)]
            feed = {"input": as_input(images, "NHWC")}
            ours = gpu.infer(feed)
            assert ours["detection_boxes"].shape[0] == size  # run at the given batch, not the profile max
            theirs = cpu.infer(feed)
            for row in range(size):
                fraction, count = matched_fraction(per_image(theirs, row), per_image(ours, row), 0.95, 1e-2)
                matched += round(fraction * count)
                total += count
        assert gpu.last_gpu_ms is not None and gpu.last_gpu_ms > 0
    assert matched / total >= 0.98


@needs_tensorrt_gpu
def test_batch_outside_the_profile_is_refused(work_dir):
    engine_path = work_dir / "trt-d0.engine"
    if not engine_path.exists():
        pytest.skip("built by test_engine_matches_cpu_reference")
    with TensorRTRunner(str(engine_path)) as gpu:
        with pytest.raises(UserError, match="outside the engine's batch range 1..8"):
            gpu.infer({"input": np.zeros((9, 256, 256, 3), np.float32)})


@needs_tensorrt_gpu
def test_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "random.engine"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="cannot load this engine"):
        TensorRTRunner(str(path)).activate()


@pytest.mark.skipif(gpu_available(), reason="checks the refusal on machines without a GPU")
def test_without_tensorrt_or_a_gpu_the_runner_says_which(tmp_path):
    """A file that is not an engine, on a machine that cannot run one: the error names what is missing."""
    import importlib.util

    path = tmp_path / "model.engine"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    if importlib.util.find_spec("tensorrt") is None:
        missing = "TensorRT is not installed"
    else:
        try:
            cuda_memory.load_cuda()
        except UserError as error:
            pytest.skip(f"no CUDA Python bindings: {error}")
        missing = "no CUDA device found"
    with pytest.raises(UserError, match=missing):
        TensorRTRunner(str(path)).activate()
    (tmp_path / "images").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--engine", str(path), "--input",
                             str(tmp_path / "images"), "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert missing in result.stderr and "--onnx" in result.stderr


@pytest.mark.parametrize("content,fragment", [(b"", "empty"), (None, "no such engine file"), ("onnx", "ONNX model")])
def test_engine_file_checks_come_first(tmp_path, content, fragment):
    path = tmp_path / "model.engine"
    if content == "onnx":
        path.write_bytes(b"\x08\x07\x12\x07tf2onnx")  # how a converted ONNX file starts
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=fragment):
        TensorRTRunner(str(path)).activate()
