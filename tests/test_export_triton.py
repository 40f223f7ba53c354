"""export_triton.py: model repository entries whose config.pbtxt Triton's own ModelConfig schema accepts."""

import os
import stat
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from google.protobuf import text_format
from test_tensorrt_runner import build_engine_with_tensorrt, needs_tensorrt_gpu
from tritonclient.grpc import model_config_pb2

from efficientdet_trt.convert import pipeline
from efficientdet_trt.serve import triton

# model_config_pb2: Triton's ModelConfig protobuf as tritonclient ships it (requirements-test.txt).
NAMES = ["person", "bicycle"] + [f"class_{i}" for i in range(2, 90)]


def parse_config(path):
    """config.pbtxt parsed by Triton's schema: an unknown field, a wrong type or enum fails here."""
    with open(path, encoding="utf-8") as handle:
        return text_format.Parse(handle.read(), model_config_pb2.ModelConfig())


def export(*args):
    return subprocess.run([sys.executable, str(ROOT / "export_triton.py"), *map(str, args)], capture_output=True,
                          text=True)


def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def onnx_graphs(fixture_model, tmp_path_factory):
    """D0 graphs with the ONNX NonMaxSuppression route (ONNX Runtime can serve them): dynamic-batch float32,
    dynamic-batch uint8 NCHW, fixed batch 1; and the default EfficientNMS_TRT one."""
    _, converted, _ = fixture_model("d0_hard")
    folder = tmp_path_factory.mktemp("triton-onnx")
    graphs = {
        "dynamic": dict(onnx_nms=True, class_names=NAMES),
        "uint8": dict(onnx_nms=True, input_dtype="uint8", input_format="NCHW"),
        "fixed": dict(onnx_nms=True, input_shape="1,256,256,3"),
        "plugin": dict(),
    }
    paths = {}
    for key, options in graphs.items():
        paths[key] = folder / f"d0-{key}.onnx"
        onnx.save(pipeline.build_graph(converted, pipeline.GraphOptions(**options)), str(paths[key]))
    return paths


def test_onnx_entry_with_dynamic_batch(onnx_graphs, tmp_path):
    repository = tmp_path / "models"
    result = export("--onnx", onnx_graphs["dynamic"], "--repository", repository, "--name", "effdet",
                    "--instances", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    entry = repository / "effdet"
    assert sorted(os.listdir(entry)) == ["1", "config.pbtxt", "labels.txt"]
    assert (entry / "1" / "model.onnx").read_bytes() == onnx_graphs["dynamic"].read_bytes()
    assert (entry / "labels.txt").read_text().splitlines() == NAMES
    mask = os.umask(0)
    os.umask(mask)
    for path in (entry, entry / "config.pbtxt", entry / "1" / "model.onnx"):
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    config = parse_config(entry / "config.pbtxt")
    assert config.name == "effdet" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("input", "TYPE_FP32", [256, 256, 3])]
    assert [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in config.output] == [
        ("num_detections", "TYPE_INT32", [1]), ("detection_boxes", "TYPE_FP32", [100, 4]),
        ("detection_scores", "TYPE_FP32", [100]), ("detection_classes", "TYPE_INT32", [100])]
    assert [o.label_filename for o in config.output] == ["", "", "", "labels.txt"]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]


def test_uint8_nchw_and_fixed_batch_entries(onnx_graphs, tmp_path):
    repository = tmp_path / "models"
    assert export("--onnx", onnx_graphs["uint8"], "--repository", repository, "--max_batch_size", 4).returncode == 0
    config = parse_config(repository / "d0-uint8" / "config.pbtxt")
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [4]
    assert (config.input[0].data_type, list(config.input[0].dims)) == (model_config_pb2.TYPE_UINT8, [3, 256, 256])
    # no class names stored in that 90-class graph: the COCO names, as infer.py shows them
    coco = (ROOT / "labels_coco.txt").read_text().splitlines()
    assert (repository / "d0-uint8" / "labels.txt").read_text().splitlines()[:90] == coco[:90]
    assert export("--onnx", onnx_graphs["fixed"], "--repository", repository, "--name", "fixed").returncode == 0
    config = parse_config(repository / "fixed" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 256, 256, 3]
    assert list(config.output[1].dims) == [1, 100, 4]
    result = export("--onnx", onnx_graphs["fixed"], "--repository", repository, "--name", "again",
                    "--max_batch_size", 4)
    assert_clean_error(result, "fixed at 1", "max_batch_size 0")
    assert not (repository / "again").exists()


def test_plugin_graph_existing_name_and_overwrite(onnx_graphs, tmp_path):
    repository = tmp_path / "models"
    result = export("--onnx", onnx_graphs["plugin"], "--repository", repository)
    assert_clean_error(result, "EfficientNMS_TRT", "--onnx_nms")
    assert not repository.exists()  # nothing created, nothing half-written
    assert export("--onnx", onnx_graphs["fixed"], "--repository", repository, "--name", "m").returncode == 0
    before = (repository / "m" / "config.pbtxt").read_text()
    result = export("--onnx", onnx_graphs["dynamic"], "--repository", repository, "--name", "m")
    assert_clean_error(result, "exists", "--overwrite")
    assert (repository / "m" / "config.pbtxt").read_text() == before
    assert export("--onnx", onnx_graphs["dynamic"], "--repository", repository, "--name", "m",
                  "--overwrite").returncode == 0
    assert parse_config(repository / "m" / "config.pbtxt").max_batch_size == 8
    assert sorted(os.listdir(repository)) == ["m"]  # no temporary folders left
    assert_clean_error(export("--onnx", tmp_path / "missing.onnx", "--repository", repository), "no such file")
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_text("not a model")
    assert_clean_error(export("--onnx", not_onnx, "--repository", repository), "not a readable ONNX model")
    assert_clean_error(export("--onnx", onnx_graphs["fixed"], "--repository", repository, "--name", "a/b"),
                       "--name")


def _engine_tensors(batch):
    """What trt_adapter.io_tensors returns for an engine built from the D0 graph (-1: dynamic batch)."""
    return [("input", True, np.dtype(np.uint8), (batch, 512, 512, 3)),
            ("num_detections", False, np.dtype(np.int32), (batch, 1)),
            ("detection_boxes", False, np.dtype(np.float32), (batch, 100, 4)),
            ("detection_scores", False, np.dtype(np.float32), (batch, 100)),
            ("detection_classes", False, np.dtype(np.int32), (batch, 100))]


def test_plan_config_from_an_engine_description():
    profile = ((1, 512, 512, 3), (8, 512, 512, 3), (16, 512, 512, 3))
    io = triton.describe_engine_io(_engine_tensors(-1), profile, NAMES)
    config = text_format.Parse(triton.config_text(io, "d0", instances=3), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert (config.input[0].data_type, list(config.input[0].dims)) == (model_config_pb2.TYPE_UINT8, [512, 512, 3])
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert config.output[3].label_filename == "labels.txt"
    smaller = text_format.Parse(triton.config_text(io, "d0", max_batch_size=4), model_config_pb2.ModelConfig())
    assert smaller.max_batch_size == 4 and list(smaller.dynamic_batching.preferred_batch_size) == [4]
    with pytest.raises(Exception, match="above the model's largest batch"):
        triton.config_text(io, "d0", max_batch_size=32)
    fixed = triton.describe_engine_io(_engine_tensors(2), (), None)
    config = text_format.Parse(triton.config_text(fixed, "d0"), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [2, 512, 512, 3]
    assert all(not output.label_filename for output in config.output)


@needs_tensorrt_gpu
def test_plan_entry_from_a_real_engine(onnx_graphs, tmp_path):
    engine = tmp_path / "d0.engine"
    build_engine_with_tensorrt(str(onnx_graphs["plugin"]), str(engine), (1, 4, 8))
    repository = tmp_path / "models"
    assert export("--engine", engine, "--repository", repository).returncode == 0
    config = parse_config(repository / "d0" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert (repository / "d0" / "1" / "model.plan").read_bytes() == engine.read_bytes()
