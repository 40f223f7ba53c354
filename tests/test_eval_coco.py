"""COCO evaluation on a synthetic data set made here: known boxes, non-numeric names, sparse category ids."""

import contextlib
import copy
import io
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from helpers import coco_annotation
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from synthetic_images import make_image

from efficientdet_trt.convert import pipeline
from efficientdet_trt.core.common import UserError
from efficientdet_trt.evaluate import coco

CATEGORIES = [{"id": 3, "name": "box"}, {"id": 7, "name": "ball"}, {"id": 12, "name": "blob"}]
NAMES = ["harbour_dawn", "kitchen-table", "street.corner", "field_b", "alley", "market_7x", "roof", "dock"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Images with drawn shapes and a COCO annotations file describing them."""
    folder = tmp_path_factory.mktemp("coco")
    (folder / "images").mkdir()
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for index, name in enumerate(NAMES):
        width, height = (320, 240) if index % 2 else (256, 320)
        image, boxes = make_image(width, height, seed=40 + index)
        file_name = f"{name}.jpg"
        image.save(folder / "images" / file_name)
        image_id = int(rng.integers(100, 10**6))
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for box in boxes:
            coco_annotation(annotations, image_id, CATEGORIES[len(annotations) % 3]["id"], box)
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return folder / "images", path, data


def ground_truth_as_results(data):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": 0.5 + 0.01 * (a["id"] % 40)} for a in data["annotations"]]


def direct_pycocotools(annotations_path, results, tmp_path):
    """The plain pycocotools recipe, from files on disk."""
    results_path = tmp_path / "direct.json"
    results_path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations_path))
        dt = gt.loadRes(str(results_path))
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def perturb(results, kind):
    out = copy.deepcopy(results)
    if kind == "shifted":
        for r in out[::2]:
            r["bbox"][0] += r["bbox"][2] * 0.3
    elif kind == "dropped":
        out = out[::3] + out[1::3]
    elif kind == "wrong_class":
        for r in out[::4]:
            r["category_id"] = 12 if r["category_id"] != 12 else 3
    return out


def test_ground_truth_scores_one(dataset):
    _, annotations, data = dataset
    gt = coco.load_annotations(str(annotations))
    evaluator = coco.evaluate(gt, ground_truth_as_results(data), [i["id"] for i in data["images"]])
    assert evaluator.stats[0] == pytest.approx(1.0) and evaluator.stats[1] == pytest.approx(1.0)
    assert all(ap == pytest.approx(1.0) for _, ap, _ in coco.per_class_ap(evaluator))


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
@pytest.mark.parametrize("kind", ["shifted", "dropped", "wrong_class"])
def test_perturbations_equal_direct_pycocotools(dataset, kind, backend, tmp_path):
    _, annotations, data = dataset
    results = perturb(ground_truth_as_results(data), kind)
    gt = coco.load_annotations(str(annotations))
    ours = coco.evaluate(gt, results, [i["id"] for i in data["images"]], backend).stats
    direct = direct_pycocotools(annotations, results, tmp_path)
    assert np.allclose(ours, direct, atol=1e-9, rtol=0)
    assert ours[0] < 0.95


def test_images_without_detections_still_count(dataset):
    _, annotations, data = dataset
    gt = coco.load_annotations(str(annotations))
    ids = [i["id"] for i in data["images"]]
    results = [r for r in ground_truth_as_results(data) if r["image_id"] != ids[0]]
    assert coco.evaluate(gt, results, ids).stats[8] < 1.0  # recall lost on the empty image
    assert coco.evaluate(gt, results, ids[1:]).stats[8] == pytest.approx(1.0)


def test_labels_map_by_name(dataset):
    _, annotations, _ = dataset
    gt = coco.load_annotations(str(annotations))
    assert coco.category_map(gt, ["ball", "unknown", "blob"]) == [7, None, 12]
    with pytest.raises(UserError, match="none of the labels"):
        coco.category_map(gt, ["cat", "dog"])


NO_BBOX = ('{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}], '
           '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": []}]}')


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "not a COCO"),
    ('{"images": [{}], "annotations": [{}], "categories": []}', "images[0] has no 'id'"),
    (NO_BBOX, "annotations[0] has no 'bbox'"),
    (NO_BBOX.replace('"segmentation": []', '"bbox": [1, 2, 3]'), "[x, y, width, height]"),
])
def test_malformed_annotations_are_clear_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(fragment)):
        coco.load_annotations(str(path))


def test_plot_is_written(dataset, tmp_path):
    _, annotations, data = dataset
    gt = coco.load_annotations(str(annotations))
    evaluator = coco.evaluate(gt, perturb(ground_truth_as_results(data), "shifted"),
                                   [i["id"] for i in data["images"]])
    coco.plot_precision_recall(evaluator, str(tmp_path / "pr.png"))
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_coco_cli_on_cpu(dataset, fixture_model, tmp_path):
    images, annotations, data = dataset
    _, converted, _ = fixture_model("d0_hard")
    onnx_path = tmp_path / "d0.onnx"
    onnx.save(pipeline.build_graph(converted), str(onnx_path))
    results_path = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(ROOT / "eval_coco.py"), "--onnx", str(onnx_path), "--input",
                             str(images), "--annotations", str(annotations), "--results", str(results_path),
                             "--batch_size", "4"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NMS score threshold is 0.4" in result.stderr  # the fixture's own threshold is above 0.01
    assert f"{len(NAMES)} images" in result.stdout and "per-class AP" in result.stdout
    printed = [float(v) for v in re.findall(r"= (-?\d+\.\d+)", result.stdout)]
    assert len(printed) == 12
    direct = direct_pycocotools(annotations, json.loads(results_path.read_text()), tmp_path)
    assert np.allclose(printed, direct, atol=1e-4)  # printed with 4 decimals
    assert (tmp_path / "results_pr.png").exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--annotations", "{tmp}/no_bbox.json"], "annotations[0] has no 'bbox'"),
    (["--results", "/proc/results.json"], "/proc/results.json: cannot write"),
    (["--plot", "{tmp}/plain.txt/pr.png"], "is a file, not a folder"),
    (["--nms_threshold", "1.5"], "between 0 and 1"),
])
def test_eval_coco_cli_checks_before_running(dataset, extra, fragment, tmp_path):
    """Annotations and output paths are checked before the model is even opened (its path does not exist)."""
    images, annotations, _ = dataset
    (tmp_path / "no_bbox.json").write_text(NO_BBOX)
    (tmp_path / "plain.txt").write_text("a file")
    args = {"--annotations": str(annotations)}
    filled = [a.format(tmp=tmp_path) for a in extra]
    if filled[0] == "--annotations":
        args = {}
    result = subprocess.run([sys.executable, str(ROOT / "eval_coco.py"), "--onnx", str(tmp_path / "later.onnx"),
                             "--input", str(images), *[v for kv in args.items() for v in kv], *filled],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1]


def test_model_names_that_contradict_the_category_ids_are_warned_about(dataset, caplog):
    _, annotations, _ = dataset
    gt = coco.load_annotations(str(annotations))
    with caplog.at_level("WARNING"):
        coco.warn_if_names_differ(gt, ["a", "b", "box"])  # class 2 -> category 3 "box": consistent
    assert not caplog.records
    with caplog.at_level("WARNING"):
        coco.warn_if_names_differ(gt, ["a", "b", "ball"])
    assert "class 2 is 'ball', category 3 is 'box'" in caplog.text and "--labels" in caplog.text
