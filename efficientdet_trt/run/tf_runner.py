"""`TFSavedModelRunner`: the EfficientDet SavedModel itself, run by TensorFlow (compare_tf.py, tests)."""

import logging
import os

import numpy as np

from efficientdet_trt.core.common import UserError
from efficientdet_trt.run.runner import Runner, TensorSpec

log = logging.getLogger("tf_runner")


class TFSavedModelRunner(Runner):
    """An EfficientDet SavedModel (AutoML or TFOD) run by TensorFlow, with the same four outputs (parity checks).

    `infer` is fed the model-size canvases ImageBatcher makes (as uint8), so
    TF's own resize is the identity and both sides see the same pixels; boxes
    come back as (ymin, xmin, ymax, xmax) in those pixels and classes 0-based.
    `run_image` takes an image of any size, which TF resizes and pads itself.
    AutoML exports answer `detections:0` rows in pixels; TFOD exports
    (exporter_lib_v2) answer `detection_boxes` normalised to the image and
    `detection_classes` as label-map ids (class + 1), turned into the same rows.
    """

    def __init__(self, saved_model, input_hw, max_detections=100):
        super().__init__()
        self.path = saved_model
        self.hw = tuple(input_hw)
        self.max_detections = max_detections
        self.name = f"tensorflow:{os.path.basename(os.path.normpath(saved_model))}"

    def activate_impl(self):
        import tensorflow as tf

        from efficientdet_trt.convert import tf_to_onnx

        tf_to_onnx.check_saved_model_path(self.path)
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        with self.session.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], self.path)
        signature = meta.signature_def["serving_default"]
        self.input_name = next(iter(signature.inputs.values())).name
        self.outputs = {key: value.name for key, value in signature.outputs.items()}
        self.output_name = next(iter(self.outputs.values()))
        self.is_tfod = "detection_boxes" in self.outputs and "raw_detection_scores" in self.outputs
        if not self.is_tfod and self.output_name != "detections:0":
            raise UserError(f"{self.path}: not an AutoML (output detections:0) or TF2 Object Detection API "
                            "(detection_boxes, ...) EfficientDet SavedModel")

    def deactivate_impl(self):
        self.session.close()

    def input_spec(self):
        return TensorSpec("input", (None, self.hw[0], self.hw[1], 3), np.dtype(np.float32))

    def run_image(self, image, tensor_names=()):
        """One uint8 [h, w, 3] image of any size (TensorFlow resizes and pads it itself).

        Returns (detection rows [K, 7] as AutoML writes them, boxes in the
        image's pixels, padding rows removed; values of `tensor_names`).
        """
        if self.is_tfod:
            return self._run_tfod(image, tensor_names)
        values = self.session.run([self.output_name, *tensor_names], {self.input_name: image[None]})
        rows = values[0][0]
        return rows[rows[:, 5] > 0][: self.max_detections], values[1:]

    def _run_tfod(self, image, tensor_names):
        keys = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
        values = self.session.run([self.outputs[k] for k in keys] + list(tensor_names),
                                  {self.input_name: image[None]})
        count = int(values[0][0])
        height, width = image.shape[:2]
        boxes = values[1][0, :count] * np.array([height, width, height, width], np.float32)
        rows = np.concatenate([np.zeros((count, 1), np.float32), boxes, values[2][0, :count, None],
                               values[3][0, :count, None]], axis=1)
        return rows[rows[:, 5] > 0][: self.max_detections], values[4:]

    def raw_heads(self, image):
        """TFOD only: what its post-processing consumes, for one image: decoded boxes [A, 4] (ymin, xmin,
        ymax, xmax) in pixels of the model-size canvas TF fitted the image into, and scores [A, C] after
        the score converter (sigmoid)."""
        boxes, scores = self.session.run([self.outputs["raw_detection_boxes"], self.outputs["raw_detection_scores"]],
                                         {self.input_name: image[None]})
        height, width = self.hw
        return boxes[0] * np.array([height, width, height, width], np.float32), scores[0]

    def as_outputs(self, detection_rows):
        """The four detection outputs of a batch from each image's AutoML detection rows (classes 0-based)."""
        batch, limit = len(detection_rows), self.max_detections
        outputs = {"num_detections": np.zeros((batch, 1), np.int32),
                   "detection_boxes": np.zeros((batch, limit, 4), np.float32),
                   "detection_scores": np.zeros((batch, limit), np.float32),
                   "detection_classes": np.zeros((batch, limit), np.int32)}
        for row, rows in enumerate(detection_rows):
            count = len(rows)
            outputs["num_detections"][row, 0] = count
            outputs["detection_boxes"][row, :count] = rows[:, 1:5]
            outputs["detection_scores"][row, :count] = rows[:, 5]
            outputs["detection_classes"][row, :count] = rows[:, 6].astype(np.int32) - 1
        return outputs

    def infer(self, feed):
        images = np.clip(np.rint(next(iter(feed.values()))), 0, 255).astype(np.uint8)
        return self.as_outputs([self.run_image(image)[0] for image in images])
