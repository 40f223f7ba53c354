"""Layer-by-layer comparison of a converted graph with the TensorFlow SavedModel it came from.

tf2onnx names the ONNX tensors after the TensorFlow tensors they compute
("fpn_cells/cell_0/fnode0/add_n/add:0"), and the graph surgery keeps those
names, so every such tensor can be fetched on both sides for the same image.
ONNX Runtime runs the graph up to the NMS plugin with every shared tensor made
an output (without its layout optimizations, like compare_tf.py);
TensorFlow runs its own graph on the same uint8 pixels. Rows come
in the ONNX graph's order, so the first row whose relative difference is large
is where a difference enters.
"""

import logging
import re
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("layer_compare")

SKIPPED_OPS = ("Shape", "Reshape", "Constant", "Cast", "Unsqueeze", "Squeeze", "Concat", "Split", "Slice")


@dataclass
class LayerDiff:
    name: str  # TensorFlow / ONNX tensor name
    op: str  # ONNX op that computes it
    max_abs: float  # max |ONNX - TF|
    tf_max: float  # max |TF|

    @property
    def relative(self):
        return self.max_abs / max(self.tf_max, 1e-12)


def _onnx_values(graph, names, image):
    """{name: value} of the tensors `names` of an onnx-graphsurgeon graph for one image (it is cut to them)."""
    import onnxruntime as ort

    from efficientdet_trt.convert.graph_surgery import gs
    from efficientdet_trt.run.onnx_runner import cpu_session_options

    tensors = graph.tensors()
    outputs = [tensors[name] for name in names]
    for tensor in outputs:
        tensor.dtype = tensor.dtype or np.float32
    graph.outputs = outputs
    graph.cleanup().toposort()
    session = ort.InferenceSession(gs.export_onnx(graph).SerializeToString(), cpu_session_options(False),
                                   providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {feed_name: image})))


def shared_tensors(graph, tf_graph):
    """(name, op) of the graph's tensors computed by non-trivial ops that TF's graph also has, in graph order."""
    graph.toposort()
    tf_ops = {op.name for op in tf_graph.get_operations()}
    shared = []
    for node in graph.nodes:
        if node.op in SKIPPED_OPS:
            continue
        for tensor in node.outputs:
            base, _, index = tensor.name.rpartition(":")
            if index == "0" and base in tf_ops:
                shared.append((tensor.name, node.op))
    return shared


def _tf_values(session, names, image, input_name):
    """{name: value} of the TF tensors that the session can fetch (some ops are not fetchable)."""
    names = list(names)
    for _ in range(len(names)):
        try:
            return dict(zip(names, session.run(names, {input_name: image})))
        except Exception as error:  # TensorFlow names the tensor it cannot fetch
            found = re.search(r"Tensor (\S+), specified in either feed_devices or fetch_devices", str(error))
            if not found or found.group(1) not in names:
                raise
            names.remove(found.group(1))
    return {}


def compare_layers(onnx_path, tf_runner, image_hwc, layout):
    """LayerDiff rows for one uint8 HxWx3 image at the model's size (tf_runner: an active TFSavedModelRunner)."""
    import onnx

    from efficientdet_trt.convert.graph_surgery import gs

    graph = gs.import_onnx(onnx.load(onnx_path))
    shared = shared_tensors(graph, tf_runner.session.graph)
    ops = dict(shared)
    theirs = _tf_values(tf_runner.session, [name for name, _ in shared], image_hwc[None], tf_runner.input_name)
    batch = image_hwc[None].astype(graph.inputs[0].dtype or np.float32)  # float32, or a uint8 input's pixels
    ours = _onnx_values(graph, list(theirs), batch.transpose(0, 3, 1, 2) if layout == "NCHW" else batch)
    rows = []
    for name, value in theirs.items():
        mine = ours[name]
        # tf2onnx computes NCHW where TensorFlow has NHWC; when C == H == W both readings fit the
        # shape, and the closer one is the right one.
        readings = [mine] + ([mine.transpose(0, 2, 3, 1)] if mine.ndim == 4 else [])
        readings = [r for r in readings if r.shape == value.shape]
        if not readings or value.dtype.kind != "f" or not value.size:
            continue
        delta = min(float(np.abs(r.astype(np.float64) - value).max()) for r in readings)
        rows.append(LayerDiff(name, ops[name], delta, float(np.abs(value).max())))
    log.info("compared %d tensors shared by the two graphs", len(rows))
    return rows


def report(rows, tolerance, worst=10):
    """Text lines: the first tensor whose relative difference exceeds `tolerance`, and the `worst` ones."""
    lines = [f"{len(rows)} tensors compared (relative = max |ONNX - TF| / max |TF|)"]
    first = next((row for row in rows if row.relative > tolerance), None)
    if first is None:
        lines.append(f"no tensor differs by more than {tolerance:g} relative")
    else:
        position = rows.index(first) + 1
        lines.append(f"first tensor above {tolerance:g} relative: #{position} {first.name} ({first.op}): "
                     f"{first.relative:.2e} (max |delta| {first.max_abs:.2e}, max |TF| {first.tf_max:.3g})")
    lines.append("largest relative differences:")
    for row in sorted(rows, key=lambda r: r.relative, reverse=True)[:worst]:
        lines.append(f"  {row.relative:9.2e}  {row.max_abs:9.2e}  {row.tf_max:9.3g}  #{rows.index(row) + 1:<4d} "
                     f"{row.op:<18s} {row.name}")
    return lines
