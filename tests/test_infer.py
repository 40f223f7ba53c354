"""infer.py end to end on the CPU over awkward image folders."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import create_onnx
from conftest import ROOT
from detections import read_tsv, split_batch
from image_batcher import ImageBatcher
from runners import OnnxCpuRunner
from synthetic_images import make_image
from visualize import class_color


@pytest.fixture(scope="module")
def d0_onnx(fixture_model, work_dir):
    _, converted, _ = fixture_model("d0_hard")
    path = work_dir / "infer-d0.onnx"
    if not path.exists():
        import onnx

        onnx.save(create_onnx.build_graph(converted), str(path))
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
    assert sorted(p.name for p in output.iterdir()) == sorted([s + ".png" for s in stems] + [s + ".txt" for s in stems])

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
    (["--onnx", "{onnx}", "--input", "{tmp}"], "--input needs --output"),
    (["--onnx", "missing.onnx", "--input", ".", "--output", "o"], "missing.onnx"),
    (["--onnx", "{onnx}", "--input", "/no/such/folder", "--output", "{tmp}/o"], "/no/such/folder"),
    (["--onnx", "{onnx}", "--input", "{tmp}", "--output", "{tmp}/o"], "no .jpg"),
    (["--onnx", "{onnx}", "--input", "{tmp}", "--output", "{tmp}/o", "--labels", "nolabels.txt"], "nolabels.txt"),
])
def test_infer_errors_are_one_line(args, fragment, d0_onnx, tmp_path):
    filled = [a.format(onnx=d0_onnx, tmp=tmp_path) for a in args]
    result = run_infer(*filled)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert fragment.format(tmp=tmp_path) in result.stderr.strip().splitlines()[-1]
