#!/usr/bin/env python3
"""Write a Triton Inference Server model repository entry for an engine or an ONNX graph.

Writes REPOSITORY/NAME/config.pbtxt, REPOSITORY/NAME/1/model.plan (--engine,
platform tensorrt_plan) or REPOSITORY/NAME/1/model.onnx (--onnx, platform
onnxruntime_onnx), and REPOSITORY/NAME/labels.txt when the model's class names
are known. Input and output names, types and dims come from the model itself (an
engine's I/O through TensorRT, which needs a GPU; an ONNX graph's through
onnx); max_batch_size from the engine's batch profile (an ONNX graph's dynamic
batch is served up to --max_batch_size), 0 with full dims for a fixed batch.
ONNX Runtime cannot run TensorRT's NMS plugins: only graphs made with
create_onnx.py --onnx_nms can be served as onnxruntime_onnx. The entry is
written in a temporary folder and renamed into place; an existing NAME is
kept unless --overwrite.
"""

import logging
import os
import re
import shutil
import tempfile

from efficientdet_trt.core.common import (
    ArgumentParser,
    UserError,
    check_not_an_input,
    check_output_folder,
    folder_mode,
    positive_int,
    prepare_output_folder,
    run_cli,
    setup_logging,
)

log = logging.getLogger("export_triton")

DEFAULT_ONNX_BATCH = 8


def default_name(model_path):
    """The model file's name without its extension, in the characters Triton model names are safe with."""
    stem = os.path.splitext(os.path.basename(model_path))[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "efficientdet"


def check_name(name):
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name or ""):
        raise UserError(f"--name {name!r}: a model name is one folder name of letters, digits, _ . - (no spaces; "
                        "not starting with . or -)")
    return name


def check_free(final, overwrite):
    if os.path.exists(final) and not overwrite:
        raise UserError(f"{final} exists; choose another --name or pass --overwrite to replace it")


def write_entry(repository, name, model_path, io, config, overwrite=False):
    """Build REPOSITORY/NAME in a temporary folder beside it, then rename it into place."""
    from efficientdet_trt.serve import triton

    final = os.path.join(repository, name)
    check_free(final, overwrite)
    work = tempfile.mkdtemp(prefix=f".{name}.", dir=repository)
    try:
        os.chmod(work, folder_mode())  # mkdtemp's folders are 0700
        version = os.path.join(work, "1")
        os.mkdir(version)
        shutil.copyfile(model_path, os.path.join(version, triton.MODEL_FILES[io.platform]))
        with open(os.path.join(work, "config.pbtxt"), "w", encoding="utf-8") as handle:
            handle.write(config)
        if io.class_names:
            with open(os.path.join(work, triton.LABELS_FILE), "w", encoding="utf-8") as handle:
                handle.write("\n".join(io.class_names) + "\n")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not os.path.exists(final):
        os.rename(work, final)
        return final
    old = tempfile.mkdtemp(prefix=f".{name}.old.", dir=repository)
    os.rename(final, os.path.join(old, name))
    try:
        os.rename(work, final)
    except BaseException:
        os.rename(os.path.join(old, name), final)  # the entry that was there stays
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return final


def main(argv=None):
    parser = ArgumentParser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-e", "--engine", help="TensorRT engine (from build_engine.py) to serve as tensorrt_plan")
    source.add_argument("--onnx", help="ONNX graph (create_onnx.py --onnx_nms) to serve as onnxruntime_onnx")
    parser.add_argument("-r", "--repository", required=True, help="the model repository folder (created if needed)")
    parser.add_argument("-n", "--name", help="model name, the folder in the repository (default: the model file's "
                        "name without extension)")
    parser.add_argument("--max_batch_size", type=positive_int, help="largest batch Triton forms (default: the "
                        f"engine profile's maximum; {DEFAULT_ONNX_BATCH} for an ONNX graph with a dynamic batch)")
    parser.add_argument("--instances", type=positive_int, default=1, help="model instances (instance_group count)")
    parser.add_argument("-l", "--labels", help="class names, one per line (class 0 first), written as labels.txt "
                        "(default: the names stored in the model)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing entry of that name")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from efficientdet_trt.core import labels
    from efficientdet_trt.serve import triton

    model_path = args.engine or args.onnx
    if os.path.isdir(model_path):
        raise UserError(f"{model_path}: is a folder; give the model file itself")
    if not os.path.isfile(model_path):
        raise UserError(f"{model_path}: no such file")
    name = check_name(args.name or default_name(model_path))
    given = labels.read_labels(args.labels) if args.labels else None
    check_output_folder(args.repository, "--repository")
    entry = os.path.join(args.repository, name)
    check_not_an_input(entry, "--repository/--name", {"--engine": args.engine, "--onnx": args.onnx,
                                                     "--labels": args.labels}, replaces_folder=True)
    check_free(entry, args.overwrite)
    if args.engine:
        from efficientdet_trt.engine.tensorrt_runner import read_engine_metadata

        metadata = read_engine_metadata(args.engine)
        labels.check_label_count(given, metadata, args.labels, args.engine)
        names = labels.model_labels(metadata, given)
        io = triton.describe_engine(args.engine, names)
    else:
        from efficientdet_trt.run.onnx_runner import load_detector_onnx, onnx_metadata

        model = load_detector_onnx(args.onnx, load_external_data=False)
        metadata = onnx_metadata(model)
        labels.check_label_count(given, metadata, args.labels, args.onnx)
        names = labels.model_labels(metadata, given)
        io = triton.describe_onnx(model, args.onnx, args.max_batch_size or DEFAULT_ONNX_BATCH, names)
    config = triton.config_text(io, name, args.max_batch_size, args.instances)
    prepare_output_folder(args.repository, "--repository")
    final = write_entry(args.repository, name, model_path, io, config, args.overwrite)
    log.info("wrote %s (%s); serve it with: tritonserver --model-repository %s", final, io.platform,
             os.path.abspath(args.repository))
    return 0


if __name__ == "__main__":
    run_cli(main)
