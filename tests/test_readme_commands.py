"""The README's example commands, run as written against the test fixtures, so the README cannot drift from
the code: every `python <script>.py ...` in a fenced bash block or an inline code span of README.md.

The README's names are given real things in a workspace: `saved_model` (and `/path/to/saved_model`) is the
trained AutoML fixture, also converted as `make demo`'s model in demo_output/; `exported/saved_model` is the
TFOD fixture; `images/` and `val2017/` are generated photos of the shapes the fixtures detect, and
`instances_val2017.json` / `instances.json` their COCO annotations. The commands run in README order in that
folder (later ones use what earlier ones wrote, as a reader would), each asserted to exit 0 without a
traceback. Those that need TensorRT or a GPU (`--engine`), `make` targets and other projects' tools are
listed and skipped with the reason.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import saved_model_path, tfod_saved_model_path
from helpers import coco_annotation
from synthetic_images import make_labelled_image

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"create_onnx.py", "build_engine.py", "infer.py", "eval_coco.py", "compare_tf.py", "export_triton.py"}
CATEGORIES = [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"}]


def readme_commands(text):
    """Every shell command of the README's bash blocks and `python ...` code spans, continuation lines joined,
    comments and optional [--flag value] parts removed, in order of appearance, each once."""
    blocks = [(m.start(), m.group(1).replace("\\\n", " ").splitlines())
              for m in re.finditer(r"```(?:bash|sh)\n(.*?)```", text, re.S)]
    spans = [(m.start(), [" ".join(m.group(1).split())]) for m in re.finditer(r"`(python [^`]+)`", text)]
    found = []
    for _, lines in sorted(blocks + spans):
        for line in lines:
            line = re.sub(r"\s+#.*$", "", line)
            line = " ".join(re.sub(r"\[[^\]]*\]", " ", line).split())
            if line and line not in found:
                found.append(line)
    return found


def runnable(command):
    """(script, args) for a command of ours that runs on a CPU, else (None, why it is not run here)."""
    words = shlex.split(command)
    if words[0] not in ("python", "python3") or len(words) < 2 or not words[1].endswith(".py"):
        return None, "not a command of this project's scripts (make, pip, pytest: see the Makefile and .ci/run)"
    script = words[1]
    if script not in SCRIPTS:
        return None, f"{script} is another project's script"
    if "--engine" in words:
        return None, "needs TensorRT and a GPU (--engine)"
    return script, [w.replace("/path/to/saved_model", "saved_model") for w in words[2:]]


def write_dataset(folder, annotations_paths, count=6, size=(160, 120)):
    """Photos of the fixtures' shapes in `folder` and their COCO annotations at each of annotations_paths."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        width, height = size if index % 2 else size[::-1]
        image, boxes, labels = make_labelled_image(width, height, seed=900 + index)
        name = f"photo_{index}.jpg"
        image.save(folder / name, quality=95)
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for box, label in zip(boxes, labels):
            coco_annotation(annotations, index + 1, CATEGORIES[label - 1]["id"], box)
    data = json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    for path in annotations_paths:
        path.write_text(data)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The folder the AutoML commands run in, and a second one for the TFOD export's conversion."""
    automl = tmp_path_factory.mktemp("readme")
    (automl / "saved_model").symlink_to(saved_model_path("d0_trained"), target_is_directory=True)
    write_dataset(automl / "images", [automl / "instances.json"])
    write_dataset(automl / "val2017", [automl / "instances_val2017.json"], count=16)  # 2 calibration batches
    # what `make demo` leaves (a model and its images), and the repository's tests/fixtures/ for its labels file
    (automl / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    demo = automl / "demo_output" / "efficientdet-d0-256-400steps"
    demo.mkdir(parents=True)
    (demo / "images").symlink_to(automl / "images", target_is_directory=True)
    made = subprocess.run([sys.executable, str(ROOT / "create_onnx.py"), "--saved_model", "saved_model", "--onnx",
                           str(demo / "model.onnx")], cwd=automl, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    return automl


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
_ran = set()  # (folder kind, script, args) already run: the same command written twice runs once


def test_the_readme_has_commands_of_every_script():
    ran = {runnable(command)[0] for command in COMMANDS}
    assert {"create_onnx.py", "infer.py", "build_engine.py", "eval_coco.py", "compare_tf.py"} <= ran, ran


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:70] for c in COMMANDS])
def test_readme_command_runs(command, workspace, tmp_path_factory):
    script, args = runnable(command)
    if script is None:
        pytest.skip(args)
    tfod = any(arg.startswith("exported/") for arg in args)
    if (tfod, script, tuple(args)) in _ran:
        pytest.skip("the same command ran above")
    _ran.add((tfod, script, tuple(args)))
    folder = workspace
    if tfod:  # the TFOD export: its own folder
        folder = tmp_path_factory.mktemp("readme_tfod")
        (folder / "exported").mkdir()
        (folder / "exported" / "saved_model").symlink_to(tfod_saved_model_path("tfod_custom"),
                                                        target_is_directory=True)
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=folder, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"README: {command}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
