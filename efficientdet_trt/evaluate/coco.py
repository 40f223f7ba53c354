"""COCO bbox evaluation with pycocotools: loading annotations, mapping classes, summaries, PR plots."""

import contextlib
import io
import json
import logging
import os

import numpy as np

from efficientdet_trt.core.common import UserError, atomic_output

log = logging.getLogger("coco")

SUMMARY_NAMES = [
    "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AP @[IoU=0.50      | area=all | maxDets=100]",
    "AP @[IoU=0.75      | area=all | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
]


def load_annotations(path):
    """A pycocotools COCO object, with a one-line error for a missing or malformed file."""
    from pycocotools.coco import COCO

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such annotations file; pass a COCO instances JSON with --annotations")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}); pass a COCO instances file") from None
    if not isinstance(data, dict) or not all(key in data for key in ("images", "annotations", "categories")):
        raise UserError(f"{path}: not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    check_entries(path, data)
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as error:
        raise UserError(f"{path}: malformed COCO annotations (missing field {error})") from None
    return coco


REQUIRED_FIELDS = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id", "bbox"),
                   "categories": ("id", "name")}


def check_entries(path, data):
    """One-line errors for entries COCO evaluation cannot use (checked before any image is run)."""
    for section, fields in REQUIRED_FIELDS.items():
        entries = data[section]
        if not isinstance(entries, list):
            raise UserError(f"{path}: '{section}' must be a list; pass a COCO instances file")
        for index, entry in enumerate(entries):
            missing = [field for field in fields if not isinstance(entry, dict) or field not in entry]
            if missing:
                raise UserError(f"{path}: {section}[{index}] has no '{missing[0]}'; every {section[:-1]} needs "
                                f"{', '.join(repr(f) for f in fields)} (a COCO instances file for bbox evaluation)")
            if section == "annotations":
                bbox = entry["bbox"]
                if not (isinstance(bbox, list) and len(bbox) == 4
                        and all(isinstance(v, (int, float)) for v in bbox)):
                    raise UserError(f"{path}: annotations[{index}] bbox is {bbox!r}; COCO boxes are "
                                    "[x, y, width, height] in pixels")
    negative = [entry for entry in data["annotations"] if entry["bbox"][2] < 0 or entry["bbox"][3] < 0]
    if negative:
        data["annotations"] = [entry for entry in data["annotations"] if entry["bbox"][2] >= 0
                               and entry["bbox"][3] >= 0]
        log.warning("%s: %d annotation(s) with a negative width or height are skipped (they would change AP): %s",
                    path, len(negative), first_few(f"id {entry.get('id', '?')} bbox {entry['bbox']}"
                                                   for entry in negative))


def first_few(items, shown=3):
    """'a, b, c and N more' for log lines that name what they count."""
    items = list(items)
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(str(item) for item in items[:shown]) + more


def warn_unpredicted_categories(coco, results, image_ids):
    """Warn naming the annotated categories (on the evaluated images) that the model never predicted."""
    annotated = {a["category_id"] for a in coco.dataset["annotations"] if a["image_id"] in set(image_ids)}
    predicted = {r["category_id"] for r in results}
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    never = sorted(annotated - predicted)
    if never:
        log.warning("%d annotated categor%s never predicted by the model (AP 0): %s", len(never),
                    "y is" if len(never) == 1 else "ies are", first_few(f"{names.get(c, c)} ({c})" for c in never))


def warn_if_names_differ(coco, names):
    """Under the id convention (category = class + 1), warn when the model's own class names disagree."""
    if not names:
        return
    by_id = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    differ = [(i, name, by_id[i + 1]) for i, name in enumerate(names) if i + 1 in by_id and by_id[i + 1] != name]
    if differ:
        index, name, category = differ[0]
        log.warning("%d of the model's class names differ from the annotations' category names under "
                    "category id = class + 1 (e.g. class %d is %r, category %d is %r); pass the model's names "
                    "with --labels to match categories by name instead", len(differ), index, name, index + 1,
                    category)


def category_map(coco, labels=None):
    """Class index -> COCO category id.

    Without labels: the COCO convention of AutoML models, category id = class + 1.
    With a labels list (class names in model order): matched by name to the
    annotation file's categories; classes with no such category map to None.
    """
    if labels is None:
        return None
    by_name = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    mapping = [by_name.get(name) for name in labels]
    if not any(m is not None for m in mapping):
        raise UserError("none of the labels match a category name in the annotations; check --labels")
    return mapping


def evaluation_backend(name="auto"):
    """'faster-coco-eval' (same numbers as pycocotools, ~9x faster, C++) when installed, else 'pycocotools'."""
    if name in ("auto", "faster-coco-eval"):
        try:
            import faster_coco_eval  # noqa: F401

            return "faster-coco-eval"
        except ImportError:
            if name != "auto":
                raise UserError("faster-coco-eval is not installed: pip install faster-coco-eval") from None
    return "pycocotools"


def evaluate(coco_gt, results, image_ids, backend="auto"):
    """Run COCO bbox evaluation over `image_ids`; returns the COCOeval object (stats in .stats).

    coco_gt is a pycocotools COCO; with the faster-coco-eval backend the same
    data set is evaluated by its C++ implementation of the same algorithm.
    """
    backend = evaluation_backend(backend)
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it logs its own copy of the summary
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster-coco-eval":
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster as Evaluator

            coco_gt = FastCOCO(copy_dataset(coco_gt.dataset))
        else:
            from pycocotools.cocoeval import COCOeval as Evaluator
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = Evaluator(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("evaluated with %s", backend)
    return evaluator


def copy_dataset(dataset):
    return {key: list(value) if isinstance(value, list) else value for key, value in dataset.items()}


def _empty_results(coco_gt):
    empty = type(coco_gt)()
    empty.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                     "annotations": []}
    empty.createIndex()
    return empty


def per_class_ap(evaluator):
    """[(category name, AP@[.5:.95], AP@.5)] from the accumulated precision, -1 where undefined."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    rows = []
    for k, category_id in enumerate(evaluator.params.catIds):
        name = evaluator.cocoGt.loadCats([category_id])[0]["name"]
        values = precision[:, :, k, 0, -1]
        ap = float(values[values > -1].mean()) if (values > -1).any() else -1.0
        at50 = precision[0, :, k, 0, -1]
        ap50 = float(at50[at50 > -1].mean()) if (at50 > -1).any() else -1.0
        rows.append((name, ap, ap50))
    return rows


def format_summary(evaluator):
    lines = [f"  {name} = {value:.4f}" for name, value in zip(SUMMARY_NAMES, evaluator.stats)]
    return "\n".join(lines)


def format_class_table(rows):
    lines = [f"  {'category':24s} {'AP':>7s} {'AP50':>7s}"]
    for name, ap, ap50 in rows:
        lines.append(f"  {name[:24]:24s} {ap:7.4f} {ap50:7.4f}" if ap >= 0 else f"  {name[:24]:24s}     n/a     n/a")
    return "\n".join(lines)


def plot_precision_recall(evaluator, path, title="Precision-recall"):
    """PNG of precision vs recall (all areas, 100 detections): IoU 0.5, 0.75 and the mean over 0.5:0.95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    recall = evaluator.params.recThrs
    figure, axes = plt.subplots(figsize=(6, 5), dpi=120)
    curves = [("IoU 0.50", precision[0]), ("IoU 0.75", precision[5]), ("IoU 0.50:0.95", precision.mean(axis=0))]
    for label, values in curves:
        masked = np.where(values > -1, values, np.nan)
        mean = np.nanmean(masked, axis=1) if np.isfinite(masked).any() else np.zeros(len(recall))
        axes.plot(recall, np.nan_to_num(mean), label=label)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
