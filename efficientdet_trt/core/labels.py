"""Class names: from a labels file, from the ONNX metadata create_onnx.py wrote, or defaults.

A model's names travel with it: `create_onnx.py --labels` stores them in the
ONNX's metadata (key `class_names`, a JSON list), build_engine.py copies that
metadata beside the engine, and infer/eval/compare_tf read them back. Without
names, a COCO-sized model (90 classes, AutoML's and TFOD's COCO label maps)
gets the COCO names, any other model `class_<n>`.
"""

import json
import logging
import os

from efficientdet_trt.core.common import UserError

log = logging.getLogger("labels")

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COCO_LABELS = os.path.join(_REPOSITORY, "labels_coco.txt")  # beside the scripts: users pass it with --labels too
METADATA_KEY = "class_names"
COCO_CLASS_COUNTS = (90, 91)


def read_labels(path):
    """One class name per line, class 0 first. Line positions are class numbers: a blank line inside the file
    is a class without a name (shown as class_<n>, with a warning); blank lines at the end are ignored."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such labels file; pass one class name per line with --labels")
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file; --labels takes one class name per line") from None
    while names and not names[-1]:
        names.pop()
    if not names:
        raise UserError(f"{path}: no class names in it; --labels takes one class name per line")
    blank = [index for index, name in enumerate(names) if not name]
    if blank:
        log.warning("%s: line(s) %s are blank: class(es) %s have no name (shown as class_<n>)", path,
                    ", ".join(str(index + 1) for index in blank), ", ".join(str(index) for index in blank))
    return [name or f"class_{index}" for index, name in enumerate(names)]


def check_label_count(names, metadata, labels_path, model_path):
    """Refuse --labels whose count differs from the class count the model's metadata records (a COCO-sized
    model takes the 90- or 91-entry COCO lists alike)."""
    count = metadata.get("num_classes")
    if not names or count is None:
        return
    count = int(count)
    allowed = set(COCO_CLASS_COUNTS) if count in COCO_CLASS_COUNTS else {count}
    if len(names) not in allowed:
        raise UserError(f"{labels_path}: has {len(names)} class names but {model_path} has {count} classes; "
                        "give one name per class, class 0 first")


def to_metadata(names):
    return json.dumps(list(names))


def from_metadata(metadata):
    """The class names stored in a model's metadata dict, or None."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return None
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        log.warning("the model's %s metadata is not a JSON list; ignoring it", METADATA_KEY)
        return None
    return [str(name) for name in names] if isinstance(names, list) else None


def model_labels(metadata, given=None):
    """Names for a model's classes: `given` (read from --labels) if any, else the model's own, else the defaults."""
    if given:
        return given
    stored = from_metadata(metadata)
    if stored:
        return stored
    count = metadata.get("num_classes")
    if count is None or int(count) in COCO_CLASS_COUNTS:
        return read_labels(COCO_LABELS)
    return [f"class_{index}" for index in range(int(count))]
