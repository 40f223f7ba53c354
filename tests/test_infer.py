"""infer.py end to end on the CPU over awkward image folders."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from PIL import Image
from synthetic_images import make_image

from efficientdet_trt.convert import pipeline
from efficientdet_trt.run.detections import read_tsv, split_batch
from efficientdet_trt.run.onnx_runner import OnnxCpuRunner
from image_batcher import ImageBatcher
from visualize import class_color


@pytest.fixture(scope="module")
def d0_onnx(fixture_model, work_dir):
    _, converted, _ = fixture_model("d0_hard")
    path = work_dir / "infer-d0.onnx"
    if not path.exists():
        onnx.save(pipeline.build_graph(converted), str(path))
    return str(path)


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    make_image(640, 480, 1)[0].save(folder / "photo.jpg", quality=92)
    make_image(300, 700, 2)[0].convert("L").save(folder / "gray_portrait.png")
    make_image(500, 500, 3)[0].convert("RGBA").save(folder / "rgba.png")
    make_image(400, 300, 4)[0].convert("CMYK").save(folder / "cmyk.jpg")
    sixteen = (np.asarray(make_image(320, 200, 5)[0].convert("L"), np.uint16) * 257)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    make_image(200, 150, 6)[0].save(folder / "dup.jpg")
    make_image(150, 200, 7)[0].save(folder / "dup.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def run_infer(*args):
    return subprocess.run([sys.executable, str(ROOT / "infer.py"), *args], capture_output=True, text=True)


def test_infer_writes_png_and_tsv_per_valid_image(d0_onnx, awkward_folder, tmp_path):
    output = tmp_path / "out"
    results_json = tmp_path / "results.json"
    result = run_infer("--onnx", d0_onnx, "--input", str(awkward_folder), "--output", str(output),
                       "--batch_size", "3", "--nms_threshold", "0.3", "--results_json", str(results_json))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "corrupt.jpg" in result.stderr and "7 images" in result.stdout and "1 unreadable skipped" in result.stdout
    stems = ["cmyk", "dup.jpg", "dup.png", "gray_portrait", "photo", "rgba", "sixteen"]
    assert sorted(p.name for p in output.iterdir()) == sorted([s + ".png" for s in stems] + [s + ".txt" for s in stems]
                                                              + ["infer_manifest.json"])

    # The TSV rows are the CPU runner's detections mapped to original pixels.
    with OnnxCpuRunner(d0_onnx) as runner:
        expected = {}
        for batch, infos in ImageBatcher(str(awkward_folder), runner.input_hw, runner.input_layout, 3):
            for info, found in zip(infos, split_batch(runner.infer({"input": batch}), infos, 0.3)):
                expected[info.path.split("/")[-1]] = found
    names = {"cmyk": "cmyk.jpg", "dup.jpg": "dup.jpg", "dup.png": "dup.png", "gray_portrait": "gray_portrait.png",
             "photo": "photo.jpg", "rgba": "rgba.png", "sixteen": "sixteen.png"}
    total = 0
    for stem, source in names.items():
        written = read_tsv(output / f"{stem}.txt")
        want = expected[source]
        assert len(written) == len(want) > 0
        assert np.allclose(written.boxes, want.boxes, atol=1e-3)
        assert np.allclose(written.scores, want.scores, atol=1e-5)
        assert np.array_equal(written.classes, want.classes)
        width, height = Image.open(awkward_folder / source).size
        assert written.boxes[:, [0, 2]].max() <= width and written.boxes[:, [1, 3]].max() <= height
        assert written.boxes.min() >= 0
        total += len(written)

    # The best detection's box is drawn in its class colour along its bottom edge.
    written = read_tsv(output / "photo.txt")
    picture = np.asarray(Image.open(output / "photo.png").convert("RGB"))
    x1, y1, x2, y2 = written.boxes[0]
    colour = np.array(class_color(int(written.classes[0])))
    bottom = min(int(y2), picture.shape[0] - 1)
    band = picture[bottom - 3:bottom + 1, int(x1) + 4:int(x2) - 4].astype(int)
    matches = (np.abs(band - colour).max(axis=2) <= 1).mean(axis=1)
    assert matches.max() > 0.9, matches

    coco = json.loads(results_json.read_text())
    assert len(coco) == total
    assert {entry["image_id"] for entry in coco} == set(names)
    assert all(entry["category_id"] >= 1 and len(entry["bbox"]) == 4 for entry in coco)


def test_infer_benchmark_mode_on_cpu(d0_onnx):
    result = run_infer("--onnx", d0_onnx, "--batch_size", "2", "--warmup", "1", "--iterations", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "end-to-end latency: mean" in result.stdout and "p99" in result.stdout and "images/s" in result.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--input", "nowhere", "--output", "{tmp}/o"], "exactly one of --engine"),
    (["--onnx", "{onnx}", "--input", "{images}"], "--input needs --output"),
    (["--onnx", "missing.onnx", "--input", "{images}", "--output", "{tmp}/o"], "missing.onnx"),
    (["--onnx", "{onnx}", "--input", "/no/such/folder", "--output", "{tmp}/o"], "/no/such/folder"),
    (["--onnx", "{onnx}", "--input", "{images}", "--output", "{tmp}/o"], "no .jpg"),
    (["--onnx", "{onnx}", "--input", "{images}", "--output", "{tmp}/o", "--labels", "nolabels.txt"], "nolabels.txt"),
    (["--onnx", "{onnx}", "--nms_threshold", "2"], "between 0 and 1"),
    (["--onnx", "{onnx}", "--nms_threshold", "-1"], "between 0 and 1"),
    (["--onnx", "{onnx}", "--batch_size", "0"], "at least 1"),
    (["--onnx", "{onnx}", "-b", "-3"], "at least 1"),
    (["--onnx", "{onnx}", "--max_images", "0"], "at least 1"),
])
def test_infer_errors_are_one_line(args, fragment, d0_onnx, tmp_path):
    (tmp_path / "images").mkdir()
    filled = [a.format(onnx=d0_onnx, tmp=tmp_path, images=tmp_path / "images") for a in args]
    result = run_infer(*filled)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert fragment.format(tmp=tmp_path) in result.stderr.strip().splitlines()[-1]


def folder_snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def two_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    make_image(256, 256, 11)[0].save(folder / "a.png")
    make_image(300, 200, 12)[0].save(folder / "b.png")
    return folder


@pytest.mark.parametrize("output", ["{images}", "{images}/results", "{tmp}"])
def test_output_folder_overlapping_the_input_is_refused(output, d0_onnx, two_images, tmp_path):
    """Same folder, a folder inside it, or one containing it: refused before anything is written."""
    before = folder_snapshot(tmp_path)
    result = run_infer("--onnx", d0_onnx, "--input", str(two_images),
                       "--output", output.format(images=two_images, tmp=tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "outside the input folder" in result.stderr.strip().splitlines()[-1]
    assert folder_snapshot(tmp_path) == before and not (two_images / "results").exists()


def test_a_result_file_never_replaces_its_input_image(d0_onnx, two_images):
    before = folder_snapshot(two_images)
    result = run_infer("--onnx", d0_onnx, "--input", str(two_images / "a.png"), "--output", str(two_images))
    assert result.returncode == 2 and "would be overwritten" in result.stderr.strip().splitlines()[-1]
    assert folder_snapshot(two_images) == before


@pytest.mark.parametrize("extra,named", [
    (["--results_json", "/proc/results.json"], "/proc/results.json"),
    (["--results_json", "{tmp}/plain.txt/results.json"], "plain.txt"),
    (["--results_json", "{tmp}/no_folder/results.json"], "no_folder"),
    (["--output", "/proc/out"], "/proc/out"),
    (["--output", "{tmp}/plain.txt/out"], "plain.txt"),
])
def test_unwritable_outputs_are_refused_before_inference(extra, named, d0_onnx, two_images, tmp_path):
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    result = run_infer("--onnx", d0_onnx, "--input", str(two_images), "--output", str(tmp_path / "out"),
                       *[a.format(tmp=tmp_path) for a in extra])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last
    assert not list((tmp_path / "out").glob("*.txt"))  # refused before any image was run


def test_files_are_written_with_the_umask_mode(d0_onnx, two_images, tmp_path):
    """Outputs get what any new file gets under the user's umask, not the temporary file's 0600."""
    output = tmp_path / "out"
    results_json = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--onnx", d0_onnx, "--input", str(two_images),
                             "--output", str(output), "--results_json", str(results_json)],
                            capture_output=True, text=True, preexec_fn=lambda: os.umask(0o002))
    assert result.returncode == 0, result.stderr[-2000:]
    written = [output / "a.png", output / "a.txt", output / "b.png", output / "b.txt", results_json]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {oct(0o664)}


def test_stale_results_are_removed(d0_onnx, two_images, tmp_path):
    """An image's files always come from the latest run that read it (README: "Output files")."""
    output = tmp_path / "out"
    first = run_infer("--onnx", d0_onnx, "--input", str(two_images), "--output", str(output))
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in output.iterdir()) == ["a.png", "a.txt", "b.png", "b.txt", "infer_manifest.json"]

    (two_images / "b.png").write_bytes(b"\x89PNG damaged since the first run")
    second = run_infer("--onnx", d0_onnx, "--input", str(two_images), "--output", str(output))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "1 unreadable skipped" in second.stdout and "b.txt" in second.stderr
    assert sorted(p.name for p in output.iterdir()) == ["a.png", "a.txt", "infer_manifest.json"]

    third = run_infer("--onnx", d0_onnx, "--input", str(two_images), "--output", str(output), "--no_visualizations")
    assert third.returncode == 0, third.stderr[-2000:]
    assert sorted(p.name for p in output.iterdir()) == ["a.txt", "infer_manifest.json"]


def test_a_valid_onnx_that_is_not_a_detector_is_a_clear_error(tmp_path, two_images):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])],
        "classifier", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "classifier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    result = run_infer("--onnx", str(path), "--input", str(two_images), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "classifier.onnx" in last and "not an EfficientDet detector graph" in last and "create_onnx.py" in last


def test_class_names_travel_in_the_onnx(fixture_model, d0_onnx, tmp_path):
    """create_onnx --labels stores the names; the runner reads them back; without names, COCO's for 90 classes."""
    from efficientdet_trt.core import labels

    _, converted, _ = fixture_model("d0_hard")  # 90 classes, like AutoML's COCO models
    names = [f"shape_{index}" for index in range(90)]
    named = tmp_path / "named.onnx"
    onnx.save(pipeline.build_graph(converted, pipeline.GraphOptions(class_names=names)), str(named))
    with OnnxCpuRunner(str(named)) as runner:
        assert labels.model_labels(runner.metadata) == names
        assert labels.model_labels(runner.metadata, ["x", "y"]) == ["x", "y"]
    with OnnxCpuRunner(d0_onnx) as runner:  # no names stored
        assert labels.model_labels(runner.metadata)[:2] == ["person", "bicycle"]
    assert labels.model_labels({"num_classes": "3"}) == ["class_0", "class_1", "class_2"]
    with pytest.raises(pipeline.UserError, match="3 class names but .* has 90 classes"):
        pipeline.build_graph(converted, pipeline.GraphOptions(class_names=["a", "b", "c"]))
