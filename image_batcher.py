"""Read image files and turn them into model-ready batches.

Shared by inference, INT8 calibration and COCO evaluation. Every image is
RGB, resized with its aspect ratio kept to fit the model's H x W, pasted
top-left and padded bottom/right, values kept in 0-255 (the graph
normalises). Two ways to do that (`Preprocessing`):

- `automl`: what AutoML's own serving graph does, to float32 precision: one
  scale min(H/h, W/w) in float32, the resized size truncated
  (int(h * scale)), TensorFlow's bilinear resize (half-pixel centres, no
  antialiasing) and padding with the model's exact mean colour (AutoML pads
  with zeros after normalising). AutoML normalises before resizing; both are
  linear per channel, so the order changes only float rounding.
- `tfod`: what a TF2 Object Detection API graph's keep_aspect_ratio_resizer
  does (core/preprocessor.py resize_to_range, min = max dimension = the
  input size): TensorFlow 1's resize_images(preserve_aspect_ratio=True), so
  one float32 scale min(H/h, W/w), sizes round(h * scale) (half to even), the
  legacy bilinear resize (no half-pixel centres: source = x * in/out), and
  padding with the model's mean colour: TFOD's SSD preprocess normalises
  first (feature extractor) and then resizes and pads with zeros.
- `nvidia`: what NVIDIA's sample did: Pillow's bilinear resize (which
  antialiases when shrinking), sizes rounded, padding (124, 116, 104).

`auto` (the scripts' default) takes `tfod` for graphs whose metadata says
they came from the Object Detection API and `automl` for the others.

Each image also gets its scales, so detections map back to original pixels.
"""

import logging
import os
import random
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from efficientdet_trt.core import pillow_pixels, resize_kernel
from efficientdet_trt.core.common import UserError
from efficientdet_trt.core.metadata import FAMILY_KEY, TFOD_FAMILY

log = logging.getLogger("image_batcher")

# What is read, in a folder and as a single file alike: the formats Pillow decodes that cameras and datasets use.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EXTENSIONS_TEXT = "/".join(IMAGE_EXTENSIONS)
PAD_COLOR = (124, 116, 104)  # NVIDIA's sample: the ImageNet mean RGB, rounded
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)  # 0.485, 0.456, 0.406 x 255
AUTOML, TFOD, NVIDIA = "automl", "tfod", "nvidia"  # preprocessing methods (not graph families)
AUTO = "auto"
METHODS = (AUTOML, TFOD, NVIDIA)


@dataclass(frozen=True)
class Preprocessing:
    """How images are fitted into the model input: method `automl`, `tfod` or `nvidia`, and the padding colour
    (0-255)."""

    method: str = AUTOML
    pad: tuple = IMAGENET_MEAN_RGB

    @classmethod
    def for_runner(cls, method, runner):
        """for_model with the mean and family the runner reads from its model (an engine keeps its ONNX's
        metadata beside it; without a mean, ImageNet's)."""
        family = runner.metadata.get(FAMILY_KEY)
        if method in (AUTO, AUTOML, TFOD) and runner.input_mean is None:
            log.info("%s does not say its normalisation mean: padding with the ImageNet mean %s", runner.name,
                     IMAGENET_MEAN_RGB)
        return cls.for_model(method, runner.input_mean, family)

    @classmethod
    def for_model(cls, method, mean_rgb=None, family=None):
        """`automl` and `tfod` pad with the model's mean colour (ImageNet's when unknown: both families'
        defaults), `nvidia` with its fixed colour; `auto` is `tfod` for a TFOD graph (`family`), else `automl`."""
        if method == AUTO:
            method = TFOD if family == TFOD_FAMILY else AUTOML
        if method not in METHODS:
            raise ValueError(f"preprocessing must be one of {METHODS}, not {method!r}")
        if method == NVIDIA:
            return cls(NVIDIA, PAD_COLOR)
        return cls(method, tuple(float(v) for v in (IMAGENET_MEAN_RGB if mean_rgb is None else mean_rgb)))


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

    def fitted_hw(self):
        """(height, width) the image was resized to inside the model input: the part that is not padding."""
        return round(self.scale_y * self.height), round(self.scale_x * self.width)


def check_input_path(input_path):
    if not os.path.exists(input_path):
        raise UserError(f"{input_path}: no such file or folder; pass an image or a folder of images with --input")


def list_images(input_path, recursive=False):
    """Sorted image files of a folder (or the one file given)."""
    check_input_path(input_path)
    if os.path.isfile(input_path):
        if not input_path.lower().endswith(IMAGE_EXTENSIONS):
            raise UserError(f"{input_path}: not a {EXTENSIONS_TEXT} image; pass an image or a folder of images")
        return [input_path]
    found = []
    if recursive:
        for root, _, files in os.walk(input_path):
            found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = [os.path.join(input_path, f) for f in os.listdir(input_path)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(input_path, f))]
    if not found:
        raise UserError(f"{input_path}: no {EXTENSIONS_TEXT} images found"
                        f"{'' if recursive else ' (add --recursive to look in subfolders)'}")
    return sorted(found)


EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def load_rgb(path, draft_box=None):
    """Open an image as 8-bit RGB whatever its mode (L, LA, P, RGBA, CMYK, 16-bit, ...), as it is displayed.

    The EXIF orientation (phone photos) is applied, so the pixels, the
    original size and every box are those of the upright picture. With
    draft_box (H, W) of the model input, a JPEG is decoded at the smallest
    reduced scale (1/2, 1/4 or 1/8) that is still at least as large as the size
    it will be resized to: much faster for big photos, slightly different pixels.
    Returns (image, (original width, original height)).
    """
    image = Image.open(path)
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unreadable
        orientation = 1
    rotated = orientation in ROTATED_ORIENTATIONS
    original = image.size[::-1] if rotated else image.size
    if draft_box is not None and image.format == "JPEG":
        # draft works on the stored (unrotated) pixels
        box = draft_box[::-1] if rotated else draft_box
        image.draft("RGB", fitted_size(image.size[0], image.size[1], *box))
    pillow_pixels.one_block_for(*image.size)  # a big photo kept in one block is resized in place, not copied
    image.load()
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: keep the top 8 bits (PIL's convert("L") would clip at 255).
        array = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((array >> 8 if array.max() > 255 else array).astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    # convert() copies even an RGB image: a 24 MB copy of a 6 MP photo for nothing
    return (image if image.mode == "RGB" else image.convert("RGB")), original


def fitted_size(original_w, original_h, height, width):
    """Size of an image resized to fit H x W with its aspect ratio kept."""
    scale = 1.0 / max(original_w / width, original_h / height)
    return min(width, max(1, round(original_w * scale))), min(height, max(1, round(original_h * scale)))


def automl_fitted_size(original_w, original_h, height, width):
    """AutoML's resize arithmetic in float32: (new_w, new_h) = int(size * min(H/h, W/w)), truncated."""
    scale = min(np.float32(height) / np.float32(original_h), np.float32(width) / np.float32(original_w))
    new_w = int(np.float32(original_w) * scale)
    new_h = int(np.float32(original_h) * scale)
    return min(width, max(1, new_w)), min(height, max(1, new_h))


def tfod_fitted_size(original_w, original_h, height, width):
    """TF1 resize_images(preserve_aspect_ratio=True) in float32: (new_w, new_h) = round(size * min(H/h, W/w)),
    rounded half to even as tf.round does."""
    scale = min(np.float32(height) / np.float32(original_h), np.float32(width) / np.float32(original_w))
    new_w = int(np.rint(np.float32(original_w) * scale))
    new_h = int(np.rint(np.float32(original_h) * scale))
    return min(width, max(1, new_w)), min(height, max(1, new_h))


def _bilinear_taps(in_size, out_size, half_pixel=True):
    """Source rows (lower, upper) and weights of TensorFlow's bilinear resize, in float32: half-pixel centres
    (tf.image.resize), or TF1's legacy source = x * in/out (resize_images, half_pixel=False)."""
    scale = np.float32(in_size) / np.float32(out_size)
    steps = np.arange(out_size, dtype=np.float32)
    position = (steps + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else steps * scale
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
    return lower, upper, (position - floor).astype(np.float32)


def _source_rows(image, used_rows):
    """(rows, row_at, pixel bytes): an RGB image's rows as uint8 [n, w * pixel bytes], and per source row its
    index in them. A PIL image is read in place where Pillow can export it (pillow_pixels: RGBX, 4 bytes a
    pixel, no copy); else, when few of its rows are used (a big photo shrunk; used_rows() gives them, sorted
    and unique), only its runs of used rows are cropped, and those are all the rows returned."""
    if isinstance(image, Image.Image):
        width, height = image.size
        if image.mode != "RGB":
            image = image.convert("RGB")
        in_place = pillow_pixels.rgbx_rows(image)
        if in_place is not None:
            return in_place, np.arange(height), 4
        used = used_rows()
        if 2 * len(used) > height:
            image = np.asarray(image)
        else:
            runs = np.split(used, np.flatnonzero(np.diff(used) != 1) + 1)
            data = b"".join(image.crop((0, int(run[0]), width, int(run[-1]) + 1)).tobytes() for run in runs)
            row_at = np.zeros(height, np.intp)
            row_at[used] = np.arange(len(used))
            return np.frombuffer(data, np.uint8).reshape(len(used), width * 3), row_at, 3
    return np.ascontiguousarray(image).reshape(image.shape[0], -1), np.arange(image.shape[0]), 3


def _used_rows(height, new_h, half_pixel):
    """The source rows a resize to new_h rows reads, sorted and unique."""
    top, bottom, _ = _bilinear_taps(height, new_h, half_pixel)
    return np.unique(np.concatenate([top, bottom]))


def resize_bilinear_tf(pixels, new_h, new_w, out=None, half_pixel=True, layout="NHWC"):
    """[h, w, 3] uint8 (an array or an RGB PIL image) -> float32 [new_h, new_w, 3] as
    tf.image.resize(method=bilinear, antialias=False) computes it (half_pixel=False: as TF1's resize_images /
    resize_bilinear(half_pixel_centers=False) does). `out`: an [H, W, 3] (layout NHWC) or [3, H, W] (NCHW)
    array at least that big (such as a batch slot), float32, or uint8 (the values rounded half to even and
    clipped, as np.rint), whose top-left new_h x new_w receives the result instead; returned as an
    [new_h, new_w, 3] view of it.

    TensorFlow's float32 arithmetic in its order (x first: top + (bottom - top) * dy of left + (right - left)
    * dx), so the result is bit-identical to it. Each source row used is interpolated along x once, however
    many output rows use it (an enlarged image reuses each row up to new_h / h times), and a big photo is
    never converted whole, only its used rows are read. The loops run compiled (efficientdet_trt.core.
    resize_kernel, through Numba) where Numba is installed, else in NumPy (same values, the resize about 2.5x
    slower: benchmarks/bench_image_batcher.py).
    """
    height, width = (pixels.size[1], pixels.size[0]) if isinstance(pixels, Image.Image) else pixels.shape[:2]
    if out is None:
        out = np.empty((new_h, new_w, 3), np.float32)
    view = out[:new_h, :new_w] if layout == "NHWC" else out[:, :new_h, :new_w].transpose(1, 2, 0)
    kernels = resize_kernel.compiled()
    if kernels is not None and out.dtype in (np.float32, np.uint8) and out.flags.c_contiguous:
        rows, row_at, pixel_bytes = _source_rows(pixels, lambda: _used_rows(height, new_h, half_pixel))
        kernels.resize(rows, row_at, height, width, new_h, new_w, half_pixel, pixel_bytes, out, layout == "NCHW",
                       out.dtype == np.uint8)
        return view
    # NumPy: the column taps gathered with one np.take over bytes (~25% faster than over 3-byte pixels), the
    # uint8 values made float32 inside the ufuncs, the arithmetic in place.
    top, bottom, weight_y = _bilinear_taps(height, new_h, half_pixel)
    left, right, weight_x = _bilinear_taps(width, new_w, half_pixel)
    used, row_of = np.unique(np.concatenate([top, bottom]), return_inverse=True)
    rows, row_at, pixel_bytes = _source_rows(pixels, lambda: used)
    columns = (np.concatenate([left, right])[:, None] * pixel_bytes + np.arange(3)).ravel()  # the taps' bytes
    at = row_at[used]
    rows = rows if len(at) == rows.shape[0] else np.take(rows, at, axis=0)
    taps = np.take(rows, columns, axis=1, mode="clip").reshape(len(used), 2 * new_w, 3)
    start, end = taps[:, :new_w], taps[:, new_w:]
    across = np.subtract(end, start, dtype=np.float32)
    across *= np.repeat(weight_x, 3).reshape(new_w, 3)  # broadcast over the leading axis only: a faster loop
    np.add(across, start, out=across)  # start + (end - start) * dx, per used source row
    upper = np.take(across, row_of[:new_h], axis=0)
    lower = np.take(across, row_of[new_h:], axis=0)
    lower -= upper
    lower *= weight_y[:, None, None]
    if view.dtype == np.float32:
        return np.add(lower, upper, out=view)  # upper + (lower - upper) * dy
    np.add(lower, upper, out=lower)
    if np.dtype(view.dtype).kind in "iu":  # rounded to the nearest and clipped on the way in
        np.clip(np.rint(lower, out=lower), 0, 255, out=view, casting="unsafe")
    else:
        view[...] = lower
    return view


def fit_into(image, original_size, out, layout, preprocessing=Preprocessing()):
    """Resize `image` to fit `out` (aspect kept, top-left, padded bottom/right) as `preprocessing` says, in place.

    `out` is one [H, W, 3] or [3, H, W] slot of a batch array (any dtype).
    Sizes and scales refer to the original image size, even when `image` was
    decoded at a reduced (draft) size. Returns (scale_x, scale_y).
    """
    height, width = (out.shape[0], out.shape[1]) if layout == "NHWC" else (out.shape[1], out.shape[2])
    integer = np.dtype(out.dtype).kind in "iu"  # uint8 batches: float values rounded to the nearest
    view = out if layout == "NHWC" else out.transpose(1, 2, 0)
    if preprocessing.method in (AUTOML, TFOD):
        fitted = automl_fitted_size if preprocessing.method == AUTOML else tfod_fitted_size
        half_pixel = preprocessing.method == AUTOML
        new_w, new_h = fitted(original_size[0], original_size[1], height, width)
        resize_bilinear_tf(image, new_h, new_w, out=out, half_pixel=half_pixel, layout=layout)
    else:
        new_w, new_h = fitted_size(original_size[0], original_size[1], height, width)
        view[:new_h, :new_w] = np.asarray(image.resize((new_w, new_h), resample=Image.BILINEAR))
    pad_around(out, layout, new_h, new_w, np.rint(preprocessing.pad) if integer else preprocessing.pad)
    # The scales the pixels were really resized by, per axis. AutoML's own graph maps boxes back
    # with its one float scale, which the truncated size makes up to one input pixel off.
    return new_w / original_size[0], new_h / original_size[1]


def pad_around(out, layout, new_h, new_w, pad):
    """Fill an [H, W, 3] (NHWC) or [3, H, W] (NCHW) `out` outside its top-left new_h x new_w with the colour
    `pad` (3 values, cast to out's dtype): in the compiled kernel (resize_kernel, without the GIL) for
    float32 and uint8 batch slots, else a whole row of values at a time (assigning the 3 values broadcast
    over every pixel runs NumPy's loop 3 values at a time, 20x slower: 0.3 ms for 512 x 128 pixels)."""
    kernels = resize_kernel.compiled()
    if kernels is not None and out.dtype in (np.float32, np.uint8) and out.flags.c_contiguous:
        kernels.fill(out, new_h, new_w, np.asarray(pad, out.dtype), layout == "NCHW")
        return
    if layout == "NCHW":
        for channel, value in enumerate(pad):
            out[channel, new_h:] = value
            out[channel, :new_h, new_w:] = value
        return
    if not out.flags.c_contiguous:
        out[new_h:] = pad
        out[:new_h, new_w:] = pad
        return
    for region in (out[new_h:], out[:new_h, new_w:]):
        if region.size:  # a view: a pixel's 3 values are contiguous, and so are the pixels of a row in it
            region.reshape(region.shape[0], -1)[...] = np.tile(pad, region.shape[1])


def fit_image(image, height, width, preprocessing=Preprocessing()):
    """Convenience: fit a PIL image into a new uint8 [H, W, 3] canvas. Returns (canvas, scale_x, scale_y)."""
    canvas = np.empty((height, width, 3), np.uint8)
    scale_x, scale_y = fit_into(image, image.size, canvas, "NHWC", preprocessing)
    return canvas, scale_x, scale_y


def add_preprocessing_argument(parser):
    """The scripts' --preprocessing option (auto, the default: what the model's own SavedModel does)."""
    parser.add_argument("--preprocessing", choices=[AUTO, *METHODS], default=AUTO,
                        help="how images are fitted into the input: automl (AutoML's own resize arithmetic, "
                        "TensorFlow's bilinear resize, padding with the model's mean colour), tfod (the Object "
                        "Detection API's keep_aspect_ratio_resizer: TF1's resize, mean-colour padding), nvidia "
                        "(NVIDIA's sample: Pillow's resize, padding 124,116,104); auto: tfod for TF2 Object Detection API "
                        "graphs, automl for the others (each what its SavedModel does)")


class ImageBatcher:
    """Iterate over (batch array, [ImageInfo]) for a folder of images.

    shape: (H, W) of the model input; layout: 'NHWC' or 'NCHW' (from the model).
    Decoding and resizing run in a pool of `workers` threads (Pillow and NumPy
    release the GIL), up to `prefetch` batches ahead of the consumer, each
    worker writing straight into its slot of the batch array. The last partial
    batch is zero-padded (len(infos) tells how many rows are real);
    exact_batches drops that tail instead (for calibration). Unreadable images
    are skipped with a warning naming them. draft=True decodes big JPEGs at a
    reduced scale first (faster, slightly different pixels). preprocessing:
    a `Preprocessing` (default AutoML's, padding with the ImageNet mean).
    """

    def __init__(self, input_path, shape, layout, batch_size=1, dtype: "npt.DTypeLike" = np.float32,
                 max_num_images=None, exact_batches=False, shuffle=False, seed=42, recursive=False, workers=None,
                 prefetch=2, draft=False, preprocessing=Preprocessing()):
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be NHWC or NCHW, not {layout}")
        self.height, self.width = shape
        self.layout = layout
        self.preprocessing = preprocessing
        self.batch_size = int(batch_size)
        self.dtype = np.dtype(dtype)
        self.workers = workers or os.cpu_count() or 1
        self.prefetch = max(1, int(prefetch))
        self.draft = draft
        self.exact_batches = exact_batches
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

    def _load_into(self, path, out):
        """Decode `path` and fit it into `out`; ImageInfo, or None if the file is unreadable."""
        try:
            image, original = load_rgb(path, (self.height, self.width) if self.draft else None)
        except Exception as error:  # PIL raises many types for broken files
            log.warning("skipping %s: cannot read it as an image (%s)", path, error)
            self.skipped.append(path)
            return None
        scale_x, scale_y = fit_into(image, original, out, self.layout, self.preprocessing)
        return ImageInfo(path, original[0], original[1], scale_x, scale_y)

    def __iter__(self):
        files = iter(self.files)
        pending = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="image-batcher") as pool:

            def submit_batch():
                paths = list(islice(files, self.batch_size))
                if paths:
                    array = np.empty(self._shape(self.batch_size), self.dtype)
                    pending.append((array, [pool.submit(self._load_into, p, array[i]) for i, p in enumerate(paths)]))

            for _ in range(self.prefetch):
                submit_batch()
            carry = None  # (array, infos) of images waiting for a full batch after skips
            while pending:
                array, futures = pending.popleft()
                infos = [future.result() for future in futures]
                submit_batch()
                rows = [i for i, info in enumerate(infos) if info is not None]
                if len(rows) < len(infos):
                    array[: len(rows)] = array[rows]
                infos = [infos[i] for i in rows]
                if self.exact_batches:
                    carry = self._merge(carry, array, infos)
                    while carry is not None and len(carry[1]) >= self.batch_size:
                        yield carry[0][: self.batch_size], carry[1][: self.batch_size]
                        rest = carry[1][self.batch_size:]
                        carry = (carry[0][self.batch_size:], rest) if rest else None
                    continue
                if infos:
                    array[len(infos):] = 0
                    yield array, infos
        if self.skipped:
            log.warning("skipped %d unreadable image(s)", len(self.skipped))

    @staticmethod
    def _merge(carry, array, infos):
        if carry is None:
            return (array[: len(infos)], infos) if infos else None
        return np.concatenate([carry[0], array[: len(infos)]]), carry[1] + infos
