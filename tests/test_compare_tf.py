"""compare_tf.py: TensorFlow against the converted model on the same pixels."""

import json
import re
import subprocess
import sys

import onnx
from conftest import NUM_TEST_IMAGES, ROOT, input_hw
from helpers import coco_annotation
from PIL import Image
from synthetic_images import make_image

from efficientdet_trt.convert import pipeline


def test_compare_tf_on_the_hard_nms_fixture(fixture_model, tmp_path):
    path, converted, _ = fixture_model("d0_hard")
    size, _ = input_hw("d0_hard")
    onnx_path = tmp_path / "d0-agnostic.onnx"
    onnx.save(pipeline.build_graph(converted, pipeline.GraphOptions(class_agnostic=True)), str(onnx_path))
    images = tmp_path / "images"
    images.mkdir()
    annotations = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    for seed in range(NUM_TEST_IMAGES):
        image, boxes = make_image(size, size, seed)
        image.save(images / f"view_{seed}.png")
        annotations["images"].append({"id": 100 + seed, "file_name": f"view_{seed}.png", "width": size, "height": size})
        for box in boxes:
            coco_annotation(annotations["annotations"], 100 + seed, 1, box)
    (tmp_path / "gt.json").write_text(json.dumps(annotations))
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "compare_tf.py"), "--saved_model", path, "--onnx",
                             str(onnx_path), "--input", str(images), "--output", str(output), "--annotations",
                             str(tmp_path / "gt.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rate = float(re.search(r"matched: \d+/\d+ \(([\d.]+)%\)", result.stdout).group(1))
    assert rate >= 99.0, result.stdout
    assert "mean IoU of matched" in result.stdout and "AP of ours against TensorFlow" in result.stdout
    ap = float(re.search(r"AP@\[\.5:\.95\] ([\d.]+)", result.stdout).group(1))
    assert ap >= 0.95
    pictures = sorted(output.iterdir())
    assert len(pictures) == NUM_TEST_IMAGES
    assert Image.open(pictures[0]).width >= 3 * size  # TensorFlow | ours | ground truth


def test_layers_report_names_the_first_layer_that_differs(fixture_model, tmp_path):
    """--layers on a faithful graph finds nothing above tolerance; on one with a changed conv it names that conv."""
    import numpy as np
    import onnx_graphsurgeon as gs

    from efficientdet_trt.evaluate import layer_compare
    from efficientdet_trt.run.tf_runner import TFSavedModelRunner

    path, converted, reference = fixture_model("lite0_320")
    good = tmp_path / "good.onnx"
    onnx.save(pipeline.build_graph(converted), str(good))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(reference.images[0]).save(images / "a.png")
    result = subprocess.run([sys.executable, str(ROOT / "compare_tf.py"), "--saved_model", path, "--onnx", str(good),
                             "--input", str(images), "--layers"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    compared = int(re.search(r"(\d+) tensors compared", result.stdout).group(1))
    assert compared >= 300 and "no tensor differs by more than 0.001 relative" in result.stdout, result.stdout

    graph = gs.import_onnx(onnx.load(str(good)))
    target = next(node for node in graph.nodes if node.op == "Conv" and "fpn_cells/cell_1/" in node.outputs[0].name)
    target.inputs[1].values = target.inputs[1].values * np.float32(1.05)
    broken = tmp_path / "broken.onnx"
    onnx.save(gs.export_onnx(graph), str(broken))
    with TFSavedModelRunner(path, input_hw("lite0_320")) as tf_runner:
        rows = layer_compare.compare_layers(str(broken), tf_runner, reference.images[0], "NHWC")
    first = next(row for row in rows if row.relative > 1e-3)
    assert first.name == target.outputs[0].name
