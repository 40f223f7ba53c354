"""Session fixtures: real AutoML EfficientDet SavedModels, their conversions and TF reference outputs.

SavedModels are exported once (by tests/fixtures/make_automl_savedmodel.py, in a
subprocess because it switches TensorFlow to graph mode) and cached under
.cache/fixtures/ (gitignored), keyed by their settings and the generator's
source, so a changed generator makes new ones; the weights they are made from
(trained ones take minutes) are kept in its weights/ folder and shared by
fixtures that differ only in post-processing. Set EFFDET_TEST_CACHE to move it.
"""

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(FIXTURE_DIR))

from make_automl_savedmodel import parse_image_size, source_digest  # noqa: E402
from synthetic_images import make_image  # noqa: E402

CACHE = Path(os.environ.get("EFFDET_TEST_CACHE", ROOT / ".cache" / "fixtures"))

# image_size 256 keeps every fixture fast; lite0 also checks a model with
# different normalisation (mean 127, std 128) and anchors (anchor_scale 3).
MODELS = {
    # model_inspect.py's defaults: hard NMS, score threshold 0.4.
    "d0_hard": dict(model_name="efficientdet-d0", image_size=256, nms_method="hard", score_thresh=0.4),
    "lite0_hard": dict(model_name="efficientdet-lite0", image_size=256, nms_method="hard", score_thresh=0.4),
    # AutoML's default post-processing: gaussian soft NMS, score threshold unset (0.001).
    "d0_soft": dict(model_name="efficientdet-d0", image_size=256, nms_method="gaussian", score_thresh=0.0),
    # Trained for 1600 steps on the synthetic shapes (about 7 min each on two cores, once):
    # real, confident detections, on which FP16 and INT8 can be judged. 128x128 trains
    # about 3 times faster than 256x256 and quantizes as well (INT8 0.93 vs 0.94 on D0).
    "d0_trained": dict(model_name="efficientdet-d0", image_size=128, nms_method="hard", score_thresh=0.4,
                       train_steps=1600),
    "lite0_trained": dict(model_name="efficientdet-lite0", image_size=128, nms_method="hard", score_thresh=0.4,
                          train_steps=1600),
    # Native sizes whose feature pyramid does not halve evenly: Lite0 at its own 320
    # (P7 3x3 -> P6 5x5) and a custom non-square D0 (AutoML's "WxH": P7 3x5 -> P6 5x10).
    "lite0_320": dict(model_name="efficientdet-lite0", image_size=320, nms_method="hard", score_thresh=0.4),
    "d0_640x320": dict(model_name="efficientdet-d0", image_size="640x320", nms_method="hard", score_thresh=0.4),
    # A box head whose regressions spread +-60 (not +-0.3): the box decoder's exp(th) * h overflows
    # float32 on ordinary images, as some real models' do on unusual ones (issue 29).
    "d0_overflow": dict(model_name="efficientdet-d0", image_size=256, nms_method="hard", score_thresh=0.4,
                        box_spread=60),
}
TRAINED_FIXTURES = ["d0_trained", "lite0_trained"]
# TF2 Object Detection API EfficientDet-D0s (tests/fixtures/make_tfod_savedmodel.py): the zoo's own
# config (ssd_efficientdet_d0_512x512_coco17_tpu-8: box coder scales 10,10,5,5, the proto's defaults),
# and a fine-tuned-style one with 3 classes, 384x384 and unit scales, the converter's other case.
TFOD_MODELS = {
    "tfod_d0": dict(num_classes=90, image_size=512, box_coder_scales="10,10,5,5"),
    "tfod_custom": dict(num_classes=3, image_size=384, box_coder_scales="1,1,1,1"),
}
NUM_TEST_IMAGES = 8


def input_hw(name):
    """(height, width) of fixture `name`'s input (image_size is AutoML's: 256, or "WxH")."""
    return parse_image_size(MODELS[name]["image_size"])


_exporting = set()  # the export processes running, stopped if the session ends first
_session_over = threading.Event()


def _exported(name, settings, script, digest, *extra):
    """CACHE/<name>-<settings key>-<generator digest>, made first by `script` if it is not there.

    A lock file per fixture makes a second maker (a background one of --fixtures-ahead,
    another pytest run) wait for the first instead of exporting the same folder at once.
    """
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    path = CACHE / f"{name}-{key}-{digest}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "saved_model.pb").is_file():
            command = [sys.executable, str(FIXTURE_DIR / script), "--output", str(path), *extra]
            for option, value in settings.items():
                command += [f"--{option}", str(value)]
            if _session_over.is_set():
                raise RuntimeError(f"{name}: not exported, the test session has ended")
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            _exporting.add(process)
            try:
                _, stderr = process.communicate()
            finally:
                _exporting.discard(process)
            if process.returncode != 0:
                raise RuntimeError(f"{script} failed:\n{stderr[-4000:]}")
    return str(path)


def saved_model_path(name):
    """Path of AutoML fixture SavedModel `name`, exporting it first if it is not cached."""
    return automl_saved_model(name, **MODELS[name])


def automl_saved_model(label, **settings):
    """Path of an AutoML SavedModel exported with make_automl_savedmodel.py `settings` (cached as `label`)."""
    return _exported(label, settings, "make_automl_savedmodel.py", source_digest(),
                     "--weights_cache", str(CACHE / "weights"))


def tfod_source_digest():
    digest = hashlib.sha256()
    for name in ("make_tfod_savedmodel.py", "synthetic_images.py"):
        digest.update((FIXTURE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def tfod_saved_model_path(name):
    """Path of TFOD fixture SavedModel `name`, exporting it first (about 3 minutes) if it is not cached."""
    return _exported(name, TFOD_MODELS[name], "make_tfod_savedmodel.py", tfod_source_digest())


class TFReference:
    """A fixture SavedModel run in TensorFlow on the test images."""

    def __init__(self, path, hw):
        import tensorflow as tf

        self.path = path
        self.images = [np.asarray(make_image(hw[1], hw[0], seed)[0]) for seed in range(NUM_TEST_IMAGES)]
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)

    def run(self, tensor_names, image):
        """Fetch TF tensors (names as in the ONNX graph, e.g. 'concat:0') for one uint8 image."""
        return self.session.run(list(tensor_names), {"image_arrays:0": image[None]})

    def detections(self, image):
        """TF's detections as (boxes yxyx, scores, classes 0-based), padding rows removed."""
        rows = self.run(["detections:0"], image)[0][0]
        rows = rows[rows[:, 5] > 0]
        return rows[:, 1:5], rows[:, 5], rows[:, 6].astype(np.int64) - 1


# Made ahead by --fixtures-ahead, in the order the tests first need them: minutes each.
SLOW_FIXTURES = [(saved_model_path, name) for name in TRAINED_FIXTURES] + [(tfod_saved_model_path, name)
                                                                           for name in TFOD_MODELS]
AHEAD_JOBS = 2
_ahead = []


def pytest_addoption(parser):
    parser.addoption("--fixtures-ahead", action="store_true",
                     help="export the slow fixture SavedModels (trained AutoML, TFOD) that are not cached, "
                          f"{AHEAD_JOBS} at a time in the background from the session's start, instead of "
                          "each when a test first needs it (a cold run on two cores: minutes sooner)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skips with the reason without one (CI). On a GPU "
                            "machine: python -m pytest -m gpu tests/test_gpu.py")


def pytest_sessionstart(session):
    if session.config.getoption("fixtures_ahead"):
        pool = ThreadPoolExecutor(AHEAD_JOBS, thread_name_prefix="fixtures-ahead")
        _ahead.append(pool)
        for make, name in SLOW_FIXTURES:
            pool.submit(make, name)  # a failure is raised again by the test that needs the fixture


def pytest_sessionfinish(session):
    _session_over.set()
    for pool in _ahead:
        pool.shutdown(wait=False, cancel_futures=True)
    for process in list(_exporting):
        process.terminate()  # exports write to a temp folder first: nothing half-made is left as a fixture


@pytest.fixture(scope="session")
def fixture_model():
    """fixture_model(name) -> (saved_model_path, ConvertedModel, TFReference), each made once."""
    from efficientdet_trt.convert import pipeline
    made = {}

    def get(name):
        if name not in made:
            path = saved_model_path(name)
            converted = pipeline.convert_saved_model(path)
            made[name] = (path, converted, TFReference(path, input_hw(name)))
        return made[name]

    return get


@pytest.fixture(scope="session")
def d0_onnx(fixture_model, tmp_path_factory):
    """The d0_hard fixture converted to ONNX with the default options, written once per session."""
    import onnx

    from efficientdet_trt.convert import pipeline
    _, converted, _ = fixture_model("d0_hard")
    path = tmp_path_factory.mktemp("d0_onnx") / "d0.onnx"
    onnx.save(pipeline.build_graph(converted), str(path))
    return path


@pytest.fixture(scope="session")
def tfod_model():
    """tfod_model(name) -> (saved_model_path, ConvertedModel, active TFSavedModelRunner), each made once."""
    from efficientdet_trt.convert import pipeline
    from efficientdet_trt.run.tf_runner import TFSavedModelRunner

    made = {}

    def get(name):
        if name not in made:
            path = tfod_saved_model_path(name)
            size = TFOD_MODELS[name]["image_size"]
            tf_runner = TFSavedModelRunner(path, (size, size)).activate()
            made[name] = (path, pipeline.convert_saved_model(path), tf_runner)
        return made[name]

    return get


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")
