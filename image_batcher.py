"""Read image files and turn them into model-ready batches.

Shared by inference, INT8 calibration and COCO evaluation. Preprocessing is
the one EfficientDet expects (and NVIDIA's sample used): RGB, aspect-preserving
bilinear resize to fit the model's H x W, pasted top-left on a canvas filled
with the ImageNet mean colour (so padding normalises to ~0), values kept in
0-255 (the graph normalises). Each image also gets its resize scales, so
detections map back to original pixels exactly, axis by axis.
"""

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from common import UserError

log = logging.getLogger("image_batcher")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
PAD_COLOR = (124, 116, 104)  # ImageNet mean RGB, rounded


@dataclass
class ImageInfo:
    """Where an image came from and how it was fitted into the model input."""

    path: str
    width: int  # original size
    height: int
    scale_x: float  # model pixels per original pixel, per axis
    scale_y: float

    def to_original(self, boxes_yxyx):
        """Map [K, 4] (ymin, xmin, ymax, xmax) model-input pixels to original pixels, clipped."""
        boxes = np.asarray(boxes_yxyx, dtype=np.float64).reshape(-1, 4)
        scale = np.array([self.scale_y, self.scale_x, self.scale_y, self.scale_x])
        limit = np.array([self.height, self.width, self.height, self.width], np.float64)
        return np.clip(boxes / scale, 0, limit)


def list_images(input_path, recursive=False):
    """Sorted image files of a folder (or the one file given)."""
    if not os.path.exists(input_path):
        raise UserError(f"{input_path}: no such file or folder; pass an image or a folder of images with --input")
    if os.path.isfile(input_path):
        return [input_path]
    found = []
    if recursive:
        for root, _, files in os.walk(input_path):
            found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = [os.path.join(input_path, f) for f in os.listdir(input_path)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(input_path, f))]
    if not found:
        raise UserError(f"{input_path}: no .jpg/.jpeg/.png/.bmp images found"
                        f"{'' if recursive else ' (add --recursive to look in subfolders)'}")
    return sorted(found)


def load_rgb(path):
    """Open an image as 8-bit RGB whatever its mode (L, LA, P, RGBA, CMYK, 16-bit, ...)."""
    image = Image.open(path)
    image.load()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: keep the top 8 bits (PIL's convert("L") would clip at 255).
        array = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((array >> 8 if array.max() > 255 else array).astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def fit_image(image, height, width):
    """Resize `image` to fit (aspect kept, bilinear) and paste it top-left on a padded canvas.

    Returns (canvas uint8 [H, W, 3], scale_x, scale_y).
    """
    scale = 1.0 / max(image.width / width, image.height / height)
    new_w = min(width, max(1, round(image.width * scale)))
    new_h = min(height, max(1, round(image.height * scale)))
    resized = image.resize((new_w, new_h), resample=Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), PAD_COLOR)
    canvas.paste(resized, (0, 0))
    return np.asarray(canvas), new_w / image.width, new_h / image.height


class ImageBatcher:
    """Iterate over (batch array, [ImageInfo]) for a folder of images.

    shape: (H, W) of the model input; layout: 'NHWC' or 'NCHW' (from the model);
    the last partial batch is padded with zero images (len(infos) tells how many
    are real). exact_batches drops that tail instead (for calibration).
    Unreadable images are skipped with a warning.
    """

    def __init__(self, input_path, shape, layout, batch_size=1, dtype=np.float32, max_num_images=None,
                 exact_batches=False, shuffle=False, seed=42, recursive=False):
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be NHWC or NCHW, not {layout}")
        self.height, self.width = shape
        self.layout = layout
        self.batch_size = int(batch_size)
        self.dtype = np.dtype(dtype)
        files = list_images(input_path, recursive)
        if shuffle:
            random.Random(seed).shuffle(files)
        if max_num_images:
            files = files[:max_num_images]
        if exact_batches:
            files = files[: len(files) - len(files) % self.batch_size]
            if not files:
                raise UserError(f"{input_path}: fewer images than one batch of {self.batch_size}")
        self.files = files
        self.skipped = []

    @property
    def num_batches(self):
        return (len(self.files) + self.batch_size - 1) // self.batch_size

    def _shape(self, count):
        if self.layout == "NHWC":
            return (count, self.height, self.width, 3)
        return (count, 3, self.height, self.width)

    def preprocess(self, path):
        """One file -> (model-input array [H,W,3] or [3,H,W], ImageInfo), or None if unreadable."""
        try:
            image = load_rgb(path)
        except Exception as error:  # PIL raises many types for broken files
            log.warning("skipping %s: cannot read it as an image (%s)", path, error)
            self.skipped.append(path)
            return None
        canvas, scale_x, scale_y = fit_image(image, self.height, self.width)
        array = canvas.transpose(2, 0, 1) if self.layout == "NCHW" else canvas
        return array.astype(self.dtype), ImageInfo(path, image.width, image.height, scale_x, scale_y)

    def __iter__(self):
        batch, infos = [], []
        for path in self.files:
            item = self.preprocess(path)
            if item is None:
                continue
            batch.append(item[0])
            infos.append(item[1])
            if len(batch) == self.batch_size:
                yield np.stack(batch), infos
                batch, infos = [], []
        if batch:
            padded = np.zeros(self._shape(self.batch_size), dtype=self.dtype)
            padded[: len(batch)] = np.stack(batch)
            yield padded, infos
        if self.skipped:
            log.warning("skipped %d unreadable image(s)", len(self.skipped))

