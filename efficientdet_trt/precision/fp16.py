"""Reduced precision written into the ONNX graph itself, on the CPU, before TensorRT sees it.

TensorRT 11.x builds strongly typed networks only (BuilderFlag.FP16 is gone):
FP16 has to be in the ONNX. `to_fp16` converts the network to float16 while the
NMS plugin node keeps float32 inputs and outputs (an FP16 EfficientNMS gives
duplicate boxes and negative scores: NVIDIA/TensorRT#1758, #2903), and the
graph's input and the four detection outputs keep their float32/int32 types,
so every runner and script treats the FP16 graph exactly like the FP32 one
(a uint8 input stays uint8, cast straight to float16).
"""

import logging
import warnings

import numpy as np
import onnx

from efficientdet_trt.convert.graph_surgery import (
    OUTPUT_NAMES,
    PLUGIN_OPS,
    add_image_window,
    cleanup,
    gs,
    set_batch_dim,
)

log = logging.getLogger("fp16")


def to_fp16(model):
    """Return a float16 copy of a converted EfficientDet ONNX model (NMS and graph I/O stay float32)."""
    from onnxconverter_common import float16

    block = list(float16.DEFAULT_OP_BLOCK_LIST) + list(PLUGIN_OPS)
    model, window_detections = _without_window(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "float32 number ... will be truncated": expected for tiny weights
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    graph = gs.import_onnx(converted)
    _retype_input_cast(graph)
    _restore_nms_outputs(graph)
    if window_detections:  # put the image window back after the float32 NMS outputs, in float32
        add_image_window(graph, window_detections)
        set_batch_dim(graph, graph.inputs[0].shape[0])
    cleanup(graph)
    result = gs.export_onnx(graph)
    halves = sum(1 for t in graph.tensors().values() if getattr(t, "dtype", None) == np.float16)
    log.info("converted to FP16: %d float16 tensors; the NMS and the graph I/O kept float32", halves)
    return result


def _without_window(model):
    """(the graph ending at the NMS, its detection count) for a --clip_to_image graph, else (model, None).

    The converter would run the image window's ops in float16 between casts (even blocked ones), which
    rounds pixel coordinates; it is cut off here and made again in float32 after the conversion.
    """
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    candidates = [tensors.get(f"window/candidate_{name}") for name in OUTPUT_NAMES]
    if any(tensor is None for tensor in candidates):
        return model, None
    detections = int(graph.outputs[1].shape[1])
    for tensor, name in zip(candidates, OUTPUT_NAMES):
        tensor.name = name
    graph.outputs = candidates
    return gs.export_onnx(cleanup(graph)), detections


def _retype_input_cast(graph):
    """A uint8 input's Cast (create_onnx --input_dtype uint8) feeds the float16 network: the converter
    declares its output float16 but leaves it casting to float32; make it cast to float16 (exact for 0-255)."""
    for node in graph.nodes:
        if node.op == "Cast" and node.inputs and node.inputs[0].dtype == np.uint8 and \
                node.outputs[0].dtype == np.float16:
            node.attrs["to"] = onnx.TensorProto.FLOAT16


def _restore_nms_outputs(graph):
    """The converter casts the NMS outputs back to float16 for the graph outputs; undo that."""
    nms = [node for node in graph.nodes if node.op in PLUGIN_OPS]
    if not nms:
        return
    node = nms[0]
    int_outputs = {0, 3} if node.op == "EfficientNMS_TRT" else {0}
    outputs = []
    for index, tensor in enumerate(node.outputs):
        consumers = list(tensor.outputs)
        if len(consumers) == 1 and consumers[0].op == "Cast" and consumers[0].outputs[0] in graph.outputs:
            cast = consumers[0]
            final = cast.outputs[0]
            cast.outputs.clear()
            cast.inputs.clear()
            tensor.name = final.name
        tensor.dtype = np.int32 if index in int_outputs else np.float32
        outputs.append(tensor)
    graph.outputs = outputs
    names = [t.name for t in outputs]
    if names != list(OUTPUT_NAMES):
        raise RuntimeError(f"unexpected NMS outputs after FP16 conversion: {names}")
