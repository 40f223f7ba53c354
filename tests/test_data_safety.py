"""Nothing a user has is lost or mixed up (issue 23): outputs never land on inputs, infer's folder ownership,
one run at a time, identifiable runs, clean signals, nothing created before the inputs are known good."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import onnx
from conftest import ROOT, saved_model_path
from synthetic_images import make_image

from efficientdet_trt.convert import pipeline


def script(name, *args, **options):
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], capture_output=True, text=True,
                          **options)


def digests(folder):
    """md5 of every file under `folder` (links followed), by relative path."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, folder)] = hashlib.md5(handle.read()).hexdigest()
    return out


def assert_refused(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


def images_folder(folder, count, size=(256, 256), ext="png", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        make_image(size[0], size[1], seed + index)[0].save(folder / f"img_{index:03d}.{ext}")
    return folder


# 1. No script writes over one of its inputs or into an input folder, whatever the spelling.

def test_create_onnx_never_writes_into_the_saved_model(tmp_path):
    saved_model = tmp_path / "sm"
    shutil.copytree(saved_model_path("d0_hard"), saved_model)
    (tmp_path / "link").symlink_to(saved_model)
    os.link(saved_model / "saved_model.pb", tmp_path / "hard.pb")
    before = digests(saved_model)
    spellings = [saved_model / "saved_model.pb", saved_model / "model.onnx", tmp_path / "sm" / ".." / "sm" / "x.onnx",
                 tmp_path / "link" / "x.onnx", tmp_path / "hard.pb"]
    for target in spellings:
        result = script("create_onnx.py", "--saved_model", saved_model, "--onnx", target, cwd=tmp_path)
        assert_refused(result, "--onnx")
        assert "tensorflow" not in result.stderr.lower()  # refused before TensorFlow was even imported
    relative = script("create_onnx.py", "--saved_model", "sm", "--onnx", "sm/variables/../saved_model.pb",
                      cwd=tmp_path)
    assert_refused(relative, "--onnx")
    assert digests(saved_model) == before


def test_build_engine_never_writes_over_its_onnx_or_into_the_calibration_images(d0_onnx, tmp_path):
    images = images_folder(tmp_path / "calib", 2)
    (tmp_path / "link.onnx").symlink_to(d0_onnx)
    os.link(d0_onnx, tmp_path / "hard.onnx")
    before, onnx_before = digests(images), digests(d0_onnx.parent)
    for flag, target in [("--engine", tmp_path / "link.onnx"), ("--engine", tmp_path / "hard.onnx"),
                         ("--save_onnx", d0_onnx), ("--engine", images / "x.engine"),
                         ("--calib_cache", images / "img_000.png")]:
        extra = ["--engine", tmp_path / "e.engine"] if flag == "--calib_cache" else []
        result = script("build_engine.py", "--onnx", d0_onnx, "--precision", "int8", "--calib_input", images,
                        flag, target, *extra)
        assert_refused(result, flag)
    assert digests(images) == before and digests(d0_onnx.parent) == onnx_before


def coco_folder(tmp_path):
    images = images_folder(tmp_path / "coco" / "images", 2)
    annotations = tmp_path / "coco" / "instances.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "img_000.png", "width": 256, "height": 256},
                   {"id": 2, "file_name": "img_001.png", "width": 256, "height": 256}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}]}))
    return images, annotations


def test_eval_coco_never_writes_over_its_annotations_or_images(d0_onnx, tmp_path):
    images, annotations = coco_folder(tmp_path)
    before = digests(tmp_path / "coco")
    for flag, target in [("--results", annotations), ("--results", images / "r.json"),
                         ("--plot", images / "img_000.png")]:
        result = script("eval_coco.py", "--onnx", d0_onnx, "--input", images, "--annotations", annotations,
                        flag, target, *(["--results", tmp_path / "r.json"] if flag == "--plot" else []))
        assert_refused(result, flag)
    assert digests(tmp_path / "coco") == before


def test_export_triton_never_replaces_the_entry_that_holds_its_source(d0_onnx, tmp_path):
    repository = tmp_path / "models"
    version = repository / "m" / "1"
    version.mkdir(parents=True)
    shutil.copyfile(d0_onnx, version / "model.onnx")
    before = digests(repository)
    result = script("export_triton.py", "--onnx", version / "model.onnx", "--repository", repository, "--name", "m",
                    "--overwrite")
    assert_refused(result, "would be replaced")
    assert digests(repository) == before


def test_infer_results_json_never_lands_on_an_input_image(d0_onnx, tmp_path):
    images = images_folder(tmp_path / "images", 2)
    before = digests(images)
    result = script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", tmp_path / "out",
                    "--results_json", images / "img_001.png")
    assert_refused(result, "--results_json")
    assert digests(images) == before and not (tmp_path / "out").exists()


# 2. infer never replaces a file it did not write.

def test_infer_refuses_to_replace_a_file_it_did_not_write(d0_onnx, tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    make_image(256, 256, 1)[0].save(folder / "a.jpg")
    make_image(300, 200, 2)[0].save(folder / "a.png")  # another image, named as a.jpg's visualization would be
    before = digests(folder)
    result = script("infer.py", "--onnx", d0_onnx, "-i", folder / "a.jpg", "-o", folder)
    assert_refused(result, "a.png", "not written by infer.py")
    assert digests(folder) == before

    # Its own earlier outputs are replaced: a second run over the same image into the same folder works.
    out = tmp_path / "out"
    for _ in range(2):
        assert script("infer.py", "--onnx", d0_onnx, "-i", folder / "a.jpg", "-o", out).returncode == 0
    manifest = json.loads((out / "infer_manifest.json").read_text())
    assert manifest["files"] == {"a.txt": 2, "a.png": 2}


# 3 and 5. One run at a time; SIGTERM mid-run leaves no temporary file and exits 143.

def _start_infer(d0_onnx, images, out):
    return subprocess.Popen([sys.executable, str(ROOT / "infer.py"), "--onnx", str(d0_onnx), "-i", str(images),
                             "-o", str(out), "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_second_run_into_a_folder_in_use_is_refused_and_sigterm_stops_cleanly(d0_onnx, tmp_path):
    images = images_folder(tmp_path / "images", 60)
    out = tmp_path / "out"
    first = _start_infer(d0_onnx, images, out)
    try:
        _wait_for(lambda: len(list(out.glob("*.txt"))) >= 3, first)
        second = script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", out)
        assert_refused(second, "another infer.py run is writing into this folder")
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("SIGTERM: stopped") and "Traceback" not in stderr
    names = os.listdir(out)
    assert not [name for name in names if name.endswith(".partial") or name == ".infer.lock"], names
    written = sorted(name for name in names if name.endswith(".txt"))
    assert 3 <= len(written) < 60
    manifest = json.loads((out / "infer_manifest.json").read_text())
    assert manifest["runs"][-1]["finished"] is False
    assert set(written) <= set(manifest["files"])  # a killed run's files stay known as infer's
    # The next run takes the folder over (its files were infer's) and finishes the job.
    again = script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list(out.glob("*.txt"))) == 60


def test_a_later_run_removes_temporary_files_of_a_killed_run(d0_onnx, tmp_path):
    images = images_folder(tmp_path / "images", 1)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])  # a process that has ended: its temporary file is stale
    dead.wait()
    stale = out / f".img_000.txt.{dead.pid}.abcd1234.partial"
    stale.write_text("half a result")
    result = script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not stale.exists()


# 4. Each run's outputs are identifiable.

def test_the_manifest_tells_which_run_wrote_each_file(d0_onnx, tmp_path):
    first_images = images_folder(tmp_path / "first", 2)
    second_images = images_folder(tmp_path / "second", 1, seed=50, ext="jpg")
    (second_images / "img_000.jpg").rename(second_images / "other.jpg")
    out = tmp_path / "out"
    assert script("infer.py", "--onnx", d0_onnx, "-i", first_images, "-o", out).returncode == 0
    result = script("infer.py", "--onnx", d0_onnx, "-i", second_images, "-o", out)
    assert result.returncode == 0
    assert "4 result file(s)" in result.stderr and "earlier runs" in result.stderr
    manifest = json.loads((out / "infer_manifest.json").read_text())
    assert [run["input"] for run in manifest["runs"]] == [str(first_images), str(second_images)]
    assert all(run["finished"] for run in manifest["runs"])
    assert manifest["files"] == {"img_000.txt": 1, "img_000.png": 1, "img_001.txt": 1, "img_001.png": 1,
                                 "other.txt": 2, "other.png": 2}


# 6. Nothing is created before the inputs are known good.

def test_no_output_folder_is_created_when_the_model_fails_to_load(tmp_path):
    images = images_folder(tmp_path / "images", 1)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = script("infer.py", "--onnx", broken, "-i", images, "-o", tmp_path / "out" / "nested")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# 8. Unreadable folders fail; one extension rule for folders and single files.

def test_a_folder_where_no_image_can_be_read_fails(d0_onnx, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8 broken")
    (images / "b.png").write_bytes(b"\x89PNG broken")
    result = script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", tmp_path / "out")
    assert_refused(result, "none of its 2 image(s) could be read")


def test_webp_and_tiff_are_read_in_folders_and_alone_and_other_files_refused_alike(d0_onnx, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    make_image(256, 256, 1)[0].save(images / "a.webp")
    make_image(256, 256, 2)[0].save(images / "b.tiff")
    make_image(256, 256, 3)[0].save(images / "c.gif")
    result = script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", tmp_path / "out")
    assert result.returncode == 0 and "2 images" in result.stdout, result.stderr[-2000:]
    alone = script("infer.py", "--onnx", d0_onnx, "-i", images / "a.webp", "-o", tmp_path / "out2")
    assert alone.returncode == 0 and "1 images" in alone.stdout
    assert_refused(script("infer.py", "--onnx", d0_onnx, "-i", images / "c.gif", "-o", tmp_path / "out3"),
                   "c.gif", "not a .jpg")


# 9. Label files: counts checked before any work; a blank line keeps the following names on their classes.

def test_a_label_count_that_does_not_match_the_model_is_refused(fixture_model, tmp_path):
    _, converted, _ = fixture_model("d0_hard")
    model = tmp_path / "m.onnx"
    names = ["c%d" % i for i in range(90)]
    onnx.save(pipeline.build_graph(converted, pipeline.GraphOptions(class_names=names)), str(model))
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    images = images_folder(tmp_path / "images", 1)
    assert_refused(script("infer.py", "--onnx", model, "-i", images, "-o", tmp_path / "out", "-l", labels),
                   "2 class names", "90 classes")
    assert not (tmp_path / "out").exists()
    assert_refused(script("export_triton.py", "--onnx", model, "-r", tmp_path / "repo", "-l", labels),
                   "2 class names", "90 classes")


def test_a_blank_line_in_a_labels_file_keeps_every_later_name_on_its_class(tmp_path):
    from efficientdet_trt.core.labels import read_labels

    path = tmp_path / "labels.txt"
    path.write_text("person\n\ncar\n\n\n")
    assert read_labels(str(path)) == ["person", "class_1", "car"]


# 11 and 12. A file that is not a detector graph from create_onnx.py is named as such, by every script.

def not_detector_graphs(folder):
    """An empty file and a valid ONNX that is not a detector (a single Relu)."""
    from onnx import TensorProto, helper

    empty = folder / "empty.onnx"
    empty.write_bytes(b"")
    relu = folder / "relu.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 256, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 256, 3])])
    onnx.save(helper.make_model(graph), str(relu))
    return {empty: "an empty file", relu: "no output num_detections"}


def test_every_script_says_a_graph_is_not_one_create_onnx_wrote(tmp_path):
    images = images_folder(tmp_path / "images", 1)
    for model, why in not_detector_graphs(tmp_path).items():
        expected = (model.name, "not an EfficientDet detector graph from create_onnx.py", why)
        assert_refused(script("export_triton.py", "--onnx", model, "-r", tmp_path / "repo"), *expected)
        assert_refused(script("build_engine.py", "--onnx", model, "--save_onnx", tmp_path / "x.onnx"), *expected)
        assert_refused(script("infer.py", "--onnx", model, "-i", images, "-o", tmp_path / "out"), *expected)
    assert sorted(os.listdir(tmp_path)) == ["empty.onnx", "images", "relu.onnx"]


# 13. Misleading combinations.

def test_output_without_input_is_an_error_not_a_benchmark(d0_onnx, tmp_path):
    assert_refused(script("infer.py", "--onnx", d0_onnx, "-o", tmp_path / "out"), "--output needs --input")
    assert not (tmp_path / "out").exists()


def test_a_folder_given_as_a_model_is_called_a_folder(tmp_path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    images = images_folder(tmp_path / "images", 1)
    assert_refused(script("infer.py", "--onnx", folder, "-i", images, "-o", tmp_path / "out"), "is a folder")
    assert_refused(script("infer.py", "--engine", folder, "-i", images, "-o", tmp_path / "out"), "is a folder")
    assert_refused(script("build_engine.py", "--onnx", folder, "--save_onnx", tmp_path / "x.onnx"), "is a folder")
    assert_refused(script("export_triton.py", "--onnx", folder, "-r", tmp_path / "repo"), "is a folder")
    assert not (tmp_path / "out").exists() and not (tmp_path / "repo").exists()


def test_results_json_is_checked_before_inference_and_named_as_itself(d0_onnx, tmp_path):
    images = images_folder(tmp_path / "images", 2)
    before = digests(images)
    (tmp_path / "taken").mkdir()
    result = script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", tmp_path / "out", "--results_json",
                    tmp_path / "taken")
    assert_refused(result, "taken", "is a folder", "--results_json takes a file name")
    assert "100%" not in result.stderr  # refused before the first batch
    assert_refused(script("infer.py", "--onnx", d0_onnx, "-i", images, "-o", tmp_path / "out", "--results_json",
                          images / "img_000.png"), "img_000.png", "--results_json", "--input")
    assert digests(images) == before and not (tmp_path / "out").exists()


def test_graph_edits_log_without_the_colored_module_line():
    code = ("import efficientdet_trt.convert.graph_surgery; from onnx_graphsurgeon.logger import G_LOGGER; "
            "G_LOGGER.warning('a graph edit warning')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "a graph edit warning" in result.stdout + result.stderr
    assert "colored" not in result.stdout + result.stderr


# 7. eval_coco: no number from annotations that do not fit the images.

def test_eval_coco_refuses_annotations_for_none_of_the_images_and_names_what_it_skips(d0_onnx, tmp_path):
    images, annotations = coco_folder(tmp_path)
    data = json.loads(annotations.read_text())
    data["annotations"][0]["image_id"] = 99  # the file names match, the boxes belong to no listed image
    annotations.write_text(json.dumps(data))
    assert_refused(script("eval_coco.py", "--onnx", d0_onnx, "--input", images, "--annotations", annotations),
                   "none of its annotations belong to the images")

    data["annotations"][0]["image_id"] = 1
    data["annotations"].append({"id": 7, "image_id": 2, "category_id": 1, "bbox": [40, 40, -5, 20], "area": 100,
                                "iscrowd": 0})
    data["categories"].append({"id": 95, "name": "suitcase"})  # beyond the 90 classes: never predicted
    data["annotations"].append({"id": 8, "image_id": 2, "category_id": 95, "bbox": [5, 5, 30, 30], "area": 900,
                                "iscrowd": 0})
    annotations.write_text(json.dumps(data))
    make_image(256, 256, 9)[0].save(images / "extra.png")
    result = script("eval_coco.py", "--onnx", d0_onnx, "--input", images, "--annotations", annotations)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "id 7 bbox [40, 40, -5, 20]" in result.stderr  # the negative box, named and skipped
    assert "1 image(s) are not in" in result.stderr and "extra.png" in result.stderr
    assert "never predicted" in result.stderr and "suitcase (95)" in result.stderr
    assert result.stdout.count("Average Precision") + result.stderr.count("Average Precision") <= 1  # one summary


# 10. INT8 calibration says how many images it used.

def test_calibration_reports_the_images_it_used(d0_onnx, tmp_path):
    images = images_folder(tmp_path / "calib", 10, size=(96, 96))
    result = script("build_engine.py", "--onnx", d0_onnx, "--precision", "int8", "--calib_input", images,
                    "--calib_batch_size", "4", "--calib_num_images", "9", "--save_onnx", tmp_path / "q.onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "calibrating on 8 of the 10 image(s)" in result.stderr
    assert "--calib_num_images 9, whole batches of 4 only" in result.stderr
    assert "8 calibration images is few" in result.stderr
