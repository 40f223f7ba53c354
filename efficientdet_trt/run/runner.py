"""The runner interface: one small interface over every way this project executes a detector.

In the spirit of Polygraphy's backends, a runner is made from a model path,
is activated (loads, allocates), answers `input_spec()`, `feed(batch, infos)`
and `infer(feed)`, and is deactivated. Callers (infer.py, eval_coco.py,
tests) do not care which one they hold: `OnnxCpuRunner` (onnx_runner.py,
ONNX Runtime on the CPU, NMS plugins in NumPy), `TensorRTRunner`
(engine/tensorrt_runner.py), `TFSavedModelRunner` (tf_runner.py, the
SavedModel itself in TensorFlow).
"""

from dataclasses import dataclass

import numpy as np

from efficientdet_trt.convert.graph_surgery import OUTPUT_NAMES, PLUGIN_OPS, WINDOW_INPUT  # made there
from efficientdet_trt.core.common import UserError

__all__ = ["OUTPUT_NAMES", "PLUGIN_OPS", "WINDOW_INPUT", "Runner", "TensorSpec", "image_layout", "window_sizes"]


def window_sizes(batch, infos, input_hw):
    """The `image_size` rows [batch, 2] float32 of a --clip_to_image graph: each image's fitted (height, width)
    in model pixels from its ImageInfo; the whole input for rows without one (padding rows, benchmarks)."""
    sizes = np.tile(np.asarray(input_hw, np.float32), (batch, 1))
    for row, info in enumerate(infos or []):
        sizes[row] = info.fitted_hw()
    return sizes


def image_layout(shape, name):
    """('NCHW' or 'NHWC', (height, width)) of an image input's shape (channel dimension of size 3)."""
    if len(shape) != 4:
        raise UserError(f"{name}: the input has shape {shape}, not a batch of images (4 dimensions); give a model "
                        "converted with create_onnx.py")
    if shape[1] == 3 and shape[3] != 3:
        return "NCHW", (shape[2], shape[3])
    if shape[3] == 3:
        return "NHWC", (shape[1], shape[2])
    raise UserError(f"{name}: cannot tell the input layout from shape {shape}")


@dataclass
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings/None for dynamic dimensions
    dtype: np.dtype


class Runner:
    """Base class: activate/deactivate (or `with`), input_spec(), feed(batch, infos), infer(feed) -> {name: array}."""

    name = "runner"
    input_mean = None  # RGB mean (0-255) the model normalises with, when the runner can tell
    window_input = None  # WINDOW_INPUT when the model has it (create_onnx.py --clip_to_image)

    def __init__(self):
        self.is_active = False
        self.metadata = {}  # what create_onnx.py recorded about the model (num_classes, class_names, ...)

    def activate(self):
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self):
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self):
        return self.activate()

    def feed(self, batch, infos=None):
        """infer()'s input for a batch of images: the image input and, for a --clip_to_image model, the
        image sizes from the batcher's `infos` (the whole input for rows without one)."""
        feed = {self.input_spec().name: batch}
        if self.window_input:
            feed[self.window_input] = window_sizes(len(batch), infos, self.input_hw)
        return feed

    def __exit__(self, *exc):
        self.deactivate()

    def activate_impl(self):
        raise NotImplementedError

    def deactivate_impl(self):
        pass

    def input_spec(self):
        """The single image input as a TensorSpec."""
        raise NotImplementedError

    def infer(self, feed):
        """Run one batch: feed maps input name -> array; returns the four detection outputs."""
        raise NotImplementedError

    @property
    def input_layout(self):
        """'NCHW' or 'NHWC', from the input's declared shape (channel dimension of size 3)."""
        return image_layout(self.input_spec().shape, self.name)[0]

    @property
    def input_hw(self):
        return image_layout(self.input_spec().shape, self.name)[1]

    @property
    def fixed_batch(self):
        """The static batch size, or None when the batch is dynamic."""
        batch = self.input_spec().shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None
