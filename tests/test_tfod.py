"""TF2 Object Detection API EfficientDets through the pipeline, against TensorFlow running the SavedModel itself."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT, TFOD_MODELS, saved_model_path
from helpers import as_input, matched_fraction, per_image, save_and_open
from synthetic_images import make_image

from efficientdet_trt.convert import pipeline
from efficientdet_trt.run import nms_reference
from image_batcher import fit_image

TFOD_FIXTURES = list(TFOD_MODELS)
HEAD_TOLERANCE = 1e-4
# (input_shape, batch sizes to run it at)
VARIANTS = [("N,{s},{s},3", (1, 4, 7)), ("1,3,{s},{s}", (1,)), ("4,{s},{s},3", (4,)), ("N,3,{s},{s}", (4,))]


def canvases(size):
    """8 letterboxed canvases: 4 images of the model's size, then 2 each of two other sizes fitted into it."""
    shapes = [(size, size)] * 4 + [(size * 5 // 4, size * 3 // 4)] * 2 + [(size * 3 // 5, size)] * 2
    out = []
    for seed, (width, height) in enumerate(shapes, start=700):
        canvas, _, _ = fit_image(make_image(width, height, seed)[0], size, size)
        out.append(canvas)
    return out


def _batches(count, size):
    return [[(start + i) % count for i in range(size)] for start in range(0, count, size)]


def tf_detections(tf_runner, image):
    rows, _ = tf_runner.run_image(image)
    return rows[:, 1:5], rows[:, 5], rows[:, 6].astype(np.int64) - 1


@pytest.mark.parametrize("fixture", TFOD_FIXTURES)
def test_recognised_settings(fixture, tfod_model, work_dir):
    """Classes, input size, normalisation, box coder scales and NMS settings come from the graph itself."""
    _, converted, _ = tfod_model(fixture)
    settings = TFOD_MODELS[fixture]
    size = settings["image_size"]
    model = pipeline.build_graph(converted)
    runner = save_and_open(model, work_dir / f"{fixture}-default.onnx")
    assert runner.metadata["efficientdet_family"] == "tfod"
    assert int(runner.metadata["num_classes"]) == settings["num_classes"]
    assert runner.input_hw == (size, size) and runner.input_layout == "NHWC" and runner.fixed_batch is None
    assert "mean [123.675, 116.28, 103.53]" in runner.metadata["normalization"]
    op, attrs, inputs, _ = runner.plugin
    assert op == "EfficientNMS_TRT" and attrs["class_agnostic"] == 0  # TFOD's NMS is per class
    assert attrs["max_output_boxes"] == 100 and attrs["iou_threshold"] == 0.5
    assert attrs["score_threshold"] == pytest.approx(1e-8)
    ops = {node.op_type for node in model.graph.node}
    assert ("Mul" in ops) and "Loop" not in ops  # TFOD's preprocessing loop is gone
    unscale = [n for n in model.graph.node if n.name == "boxes/unscale"]
    assert bool(unscale) == (settings["box_coder_scales"] != "1,1,1,1")


@pytest.mark.parametrize("fixture", TFOD_FIXTURES)
def test_heads_match_tensorflow(fixture, tfod_model, work_dir):
    """What TFOD's post-processing consumes (decoded boxes, sigmoid scores) equals TF's to 1e-4."""
    _, converted, tf_runner = tfod_model(fixture)
    size = TFOD_MODELS[fixture]["image_size"]
    runner = save_and_open(pipeline.build_graph(converted), work_dir / f"{fixture}-heads.onnx",
                           layout_optimizations=False)
    worst_boxes = worst_scores = 0.0
    dropped = 0
    for image in canvases(size):
        boxes, logits, anchors = runner.plugin_inputs(runner.infer_raw({"input": as_input([image], "NHWC")}))
        tf_boxes, tf_scores = tf_runner.raw_heads(image)
        kept = logits[0, :, 0] > -1e3  # anchors whose box lies entirely outside the image are dropped
        dropped += int((~kept).sum())
        ours = nms_reference.decode_center_size(boxes[0], anchors[0])
        worst_boxes = max(worst_boxes, float(np.abs(ours[kept] - tf_boxes[kept]).max()) / size)
        worst_scores = max(worst_scores, float(np.abs(nms_reference.sigmoid(logits[0][kept]) - tf_scores[kept]).max()))
        outside = (tf_boxes[~kept][:, :2] >= size).any(axis=1) | (tf_boxes[~kept][:, 2:] <= 0).any(axis=1)
        assert outside.all()
    print(f"{fixture}: max |delta| boxes {worst_boxes:.2e} (normalised), scores {worst_scores:.2e}; "
          f"{dropped} anchor boxes outside the image dropped over 8 images")
    assert worst_boxes <= HEAD_TOLERANCE and worst_scores <= HEAD_TOLERANCE


@pytest.mark.parametrize("fixture", TFOD_FIXTURES)
@pytest.mark.parametrize("shape,run_batches", VARIANTS)
def test_detections_match_tensorflow(fixture, shape, run_batches, tfod_model, work_dir):
    """The default graph (per-class EfficientNMS) finds >= 99% of TFOD's own detections."""
    _, converted, tf_runner = tfod_model(fixture)
    size = TFOD_MODELS[fixture]["image_size"]
    input_shape = shape.format(s=size)
    runner = save_and_open(pipeline.build_graph(converted, pipeline.GraphOptions(input_shape=input_shape)),
                           work_dir / f"{fixture}-{input_shape.replace(',', 'x')}.onnx", layout_optimizations=False)
    images = canvases(size)
    reference = [tf_detections(tf_runner, image) for image in images]
    matched = total = 0
    for batch_size in run_batches:
        for indices in _batches(len(images), batch_size):
            outputs = runner.infer({"input": as_input([images[i] for i in indices], runner.input_layout)})
            for row, index in enumerate(indices):
                fraction, count = matched_fraction(reference[index], per_image(outputs, row, clip_to=(size, size)))
                matched += round(fraction * count)
                total += count
    print(f"{fixture} {input_shape}: matched {matched}/{total} of TensorFlow's detections")
    assert total >= 8 * 50
    assert matched / total >= 0.99


def test_other_nms_routes_match_the_default(tfod_model, work_dir):
    """--class_agnostic, --onnx_nms and --legacy_plugins graphs of a TFOD model run and agree with their peers."""
    _, converted, _ = tfod_model("tfod_custom")
    size = TFOD_MODELS["tfod_custom"]["image_size"]
    feed = {"input": as_input(canvases(size)[:4], "NHWC")}
    default = save_and_open(pipeline.build_graph(converted), work_dir / "tfod-routes-default.onnx").infer(feed)
    onnx_nms = save_and_open(pipeline.build_graph(converted, pipeline.GraphOptions(onnx_nms=True)),
                             work_dir / "tfod-routes-onnx.onnx")
    assert onnx_nms.plugin is None
    plain = onnx_nms.infer(feed)
    legacy = save_and_open(pipeline.build_graph(converted, pipeline.GraphOptions(legacy_plugins=True)),
                           work_dir / "tfod-routes-legacy.onnx").infer(feed)
    agnostic = save_and_open(pipeline.build_graph(converted, pipeline.GraphOptions(class_agnostic=True)),
                             work_dir / "tfod-routes-agnostic.onnx").infer(feed)
    legacy_matched = legacy_total = 0
    for row in range(4):
        assert matched_fraction(per_image(default, row), per_image(plain, row), 0.999, 1e-5)[0] >= 0.99
        fraction, count = matched_fraction(per_image(default, row), per_image(legacy, row), 0.99, 1e-4)
        legacy_matched += round(fraction * count)
        legacy_total += count
        boxes = per_image(agnostic, row)[0]
        ious = [nms_reference.iou_one_to_many(b, np.delete(boxes, i, axis=0)).max() for i, b in enumerate(boxes)]
        assert max(ious) <= 0.5 + 1e-6  # one NMS over all classes: no two kept boxes overlap beyond IoU 0.5
    print(f"tfod_custom: BatchedNMS finds {legacy_matched}/{legacy_total} of EfficientNMS's detections")
    # BatchedNMS_TRT keeps the top 1024 per class before NMS (EfficientNMS 4096 over all) and uses
    # Caffe's +1-pixel IoU: with 3 classes over 27,621 anchors that differs more than on AutoML's D0.
    assert legacy_matched / legacy_total >= 0.9


def test_fp16_and_int8_graphs_run_and_are_reported(tfod_model, work_dir, tmp_path):
    """build_engine.py --save_onnx's FP16 and INT8 Q/DQ graphs of a TFOD model, on the CPU, against FP32."""
    from synthetic_images import write_images

    _, converted, _ = tfod_model("tfod_custom")
    size = TFOD_MODELS["tfod_custom"]["image_size"]
    fp32 = work_dir / "tfod-fp32.onnx"
    onnx.save(pipeline.build_graph(converted), str(fp32))
    write_images(str(tmp_path / "calib"), 16, size, size)
    results = {}
    for precision in ("fp16", "int8"):
        path = tmp_path / f"tfod-{precision}.onnx"
        args = ["--onnx", str(fp32), "--precision", precision, "--save_onnx", str(path)]
        if precision == "int8":
            args += ["--calib_input", str(tmp_path / "calib"), "--calib_batch_size", "4"]
        result = subprocess.run([sys.executable, str(ROOT / "build_engine.py"), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        feed = {"input": as_input(canvases(size), "NHWC")}
        want = save_and_open(onnx.load(str(fp32)), tmp_path / "fp32-copy.onnx").infer(feed)
        got = save_and_open(onnx.load(str(path)), tmp_path / f"{precision}-copy.onnx").infer(feed)
        fractions = [matched_fraction(per_image(want, row), per_image(got, row), 0.9, None)[0] for row in range(8)]
        results[precision] = float(np.mean(fractions))
    print(f"tfod_custom: FP32 detections found (IoU >= 0.9, same class): FP16 {results['fp16']:.3f}, "
          f"INT8 {results['int8']:.3f}")
    assert results["fp16"] >= 0.95


def test_infer_eval_and_compare_tf_run_end_to_end(tfod_model, work_dir, tmp_path):
    from synthetic_images import write_images

    path, converted, _ = tfod_model("tfod_custom")
    size = TFOD_MODELS["tfod_custom"]["image_size"]
    model_path = tmp_path / "tfod.onnx"
    options = pipeline.GraphOptions(class_names=["circle", "square", "blob"])
    onnx.save(pipeline.build_graph(converted, options), str(model_path))
    images = tmp_path / "images"
    write_images(str(images), 4, size, size * 3 // 4)

    def run(script, *args):
        result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run("infer.py", "--onnx", str(model_path), "--input", str(images), "--output", str(tmp_path / "out"),
        "--results_json", str(tmp_path / "results.json"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3}
    assert len(list((tmp_path / "out").glob("*.png"))) == 4

    names = sorted(p.name for p in images.iterdir())
    annotations = {"images": [{"id": i + 1, "file_name": n, "width": size * 3 // 4, "height": size}
                              for i, n in enumerate(names)],
                   "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "blob"}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000,
                                    "iscrowd": 0}]}
    (tmp_path / "instances.json").write_text(json.dumps(annotations))
    evaluated = run("eval_coco.py", "--onnx", str(model_path), "--input", str(images), "--annotations",
                    str(tmp_path / "instances.json"))
    assert "4 images" in evaluated.stdout and "per-class AP" in evaluated.stdout
    assert "differ from the annotations" not in evaluated.stderr  # the model's names are the categories'

    compared = run("compare_tf.py", "--saved_model", path, "--onnx", str(model_path), "--input", str(images))
    assert "matched:" in compared.stdout and "pre-NMS heads" in compared.stdout


# Photos of other shapes than the model's, in a landscape and a portrait size (width, height).
PHOTO_SIZES = [(800, 600), (600, 800)]


def photo_detections(tfod_model, fixture, model, folder, preprocessing="auto"):
    """(TensorFlow's, ours) Detections per photo: TF fed the raw photo (its own resize, padding and
    post-processing), ours the batcher's canvas (and the image sizes, for a --clip_to_image graph)."""
    from synthetic_images import write_images

    from efficientdet_trt.run.detections import split_batch
    from image_batcher import ImageBatcher, ImageInfo, Preprocessing, load_rgb

    _, _, tf_runner = tfod_model(fixture)
    for index, (width, height) in enumerate(PHOTO_SIZES):
        write_images(str(folder), 2, width, height, seed=800 + 10 * index, ext="jpg")
        for path in folder.glob("img_00[01].jpg"):
            path.rename(folder / f"{width}x{height}_{path.name}")
    runner = save_and_open(model, folder.parent / f"{folder.name}.onnx", layout_optimizations=False)
    batcher = ImageBatcher(str(folder), runner.input_hw, runner.input_layout, 2,
                           preprocessing=Preprocessing.for_runner(preprocessing, runner))
    theirs, ours = [], []
    for batch, infos in batcher:
        ours += split_batch(runner.infer(runner.feed(batch, infos)), infos)
        for info in infos:
            rows, _ = tf_runner.run_image(np.asarray(load_rgb(info.path)[0]))
            raw = ImageInfo(info.path, info.width, info.height, 1.0, 1.0)  # TF's boxes are in photo pixels
            theirs += split_batch(tf_runner.as_outputs([rows]), [raw])
    return theirs, ours


def as_tuple(found):
    return found.boxes[:, [1, 0, 3, 2]].astype(np.float32), found.scores, found.classes


@pytest.mark.parametrize("fixture", TFOD_FIXTURES)
@pytest.mark.parametrize("route", ["plugin", "onnx_nms"])
def test_clip_to_image_gives_tensorflows_detections_on_photos(fixture, route, tfod_model, tmp_path):
    """--clip_to_image: the NMS results clipped to each photo inside the canvas and the best kept, as TFOD's
    post-processing does: on landscape and portrait photos >= 99% of TF's detections found (IoU >= 0.99,
    same class, |score delta| <= 1e-3), as many per photo as TF's. Without it, boxes in the padding take
    NMS places TF gives to detections in the photo."""
    _, converted, _ = tfod_model(fixture)
    model = pipeline.build_graph(converted, pipeline.GraphOptions(clip_to_image=True, onnx_nms=route == "onnx_nms"))
    assert [value.name for value in model.graph.input] == ["input", "image_size"]
    theirs, ours = photo_detections(tfod_model, fixture, model, tmp_path / "photos")
    matched = total = 0
    for reference, found in zip(theirs, ours):
        assert len(found) == len(reference)
        fraction, count = matched_fraction(as_tuple(reference), as_tuple(found), 0.99, 1e-3)
        matched += round(fraction * count)
        total += count
    print(f"{fixture} {route} --clip_to_image: {matched}/{total} of TensorFlow's detections on photos")
    assert total >= 4 * 50 and matched / total >= 0.99

    plain = pipeline.build_graph(converted, pipeline.GraphOptions(onnx_nms=route == "onnx_nms"))
    theirs, without = photo_detections(tfod_model, fixture, plain, tmp_path / "photos_plain")
    fewer = sum(len(reference) - len(found) for reference, found in zip(theirs, without))
    found = sum(matched_fraction(as_tuple(r), as_tuple(f), 0.99, 1e-3)[0] * len(r) for r, f in zip(theirs, without))
    print(f"{fixture} {route} without --clip_to_image: {sum(map(len, without))} detections where TF has "
          f"{sum(map(len, theirs))}, {found / total:.1%} of TF's found")
    assert fewer > 0  # what the option is for: the padding's boxes cost detections on these photos


def test_clip_to_image_graphs_take_every_route_precision_and_the_triton_export(tfod_model, work_dir, tmp_path):
    """The legacy plugin route, FP16 and INT8 graphs (build_engine.py --save_onnx) and export_triton.py all
    carry the second input; AutoML models refuse the option before converting."""
    from google.protobuf import text_format
    from synthetic_images import write_images
    from tritonclient.grpc import model_config_pb2

    _, converted, _ = tfod_model("tfod_custom")
    size = TFOD_MODELS["tfod_custom"]["image_size"]
    clip = work_dir / "tfod-clip.onnx"
    onnx.save(pipeline.build_graph(converted, pipeline.GraphOptions(clip_to_image=True)), str(clip))
    canvases_feed = as_input(canvases(size), "NHWC")
    sizes = np.tile(np.array([[size, size]], np.float32), (8, 1))
    sizes[4:6] = [size, size * 3 // 5]  # the narrow photos' part of the canvas (canvases(): 3/5 as wide)
    feed = {"input": canvases_feed, "image_size": sizes}
    want = save_and_open(onnx.load(str(clip)), tmp_path / "fp32.onnx").infer(feed)
    assert want["detection_boxes"][4:6, :, 3].max() <= size * 3 // 5  # clipped to the photo
    options = pipeline.GraphOptions(clip_to_image=True, legacy_plugins=True)
    legacy = save_and_open(pipeline.build_graph(converted, options),
                           tmp_path / "legacy.onnx").infer(feed)
    assert legacy["detection_boxes"][4:6, :, 3].max() <= size * 3 // 5 and legacy["num_detections"].min() > 0
    write_images(str(tmp_path / "calib"), 8, size, size)
    for precision in ("fp16", "int8"):
        path = tmp_path / f"clip-{precision}.onnx"
        args = ["--onnx", str(clip), "--precision", precision, "--save_onnx", str(path)]
        if precision == "int8":
            args += ["--calib_input", str(tmp_path / "calib"), "--calib_batch_size", "4"]
        result = subprocess.run([sys.executable, str(ROOT / "build_engine.py"), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        got = save_and_open(onnx.load(str(path)), tmp_path / f"{precision}-copy.onnx").infer(feed)
        assert [v.name for v in onnx.load(str(path)).graph.input] == ["input", "image_size"]
        assert got["detection_boxes"][4:6, :, 3].max() <= size * 3 // 5
        if precision == "fp16":
            fractions = [matched_fraction(per_image(want, row), per_image(got, row), 0.9, None)[0] for row in range(8)]
            assert np.mean(fractions) >= 0.95

    onnx_nms = work_dir / "tfod-clip-onnx-nms.onnx"
    onnx.save(pipeline.build_graph(converted, pipeline.GraphOptions(clip_to_image=True, onnx_nms=True)), str(onnx_nms))
    result = subprocess.run([sys.executable, str(ROOT / "export_triton.py"), "--onnx", str(onnx_nms), "-r",
                             str(tmp_path / "repo"), "-n", "clip"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    config = text_format.Parse((tmp_path / "repo" / "clip" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [size, size, 3]), ("image_size", [2])]

    automl = saved_model_path("d0_hard")
    result = subprocess.run([sys.executable, str(ROOT / "create_onnx.py"), "--saved_model", automl, "--onnx",
                             str(tmp_path / "x.onnx"), "--clip_to_image"], capture_output=True, text=True)
    assert result.returncode == 2 and "for TF2 Object Detection API models" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "x.onnx").exists()
