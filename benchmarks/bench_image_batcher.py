#!/usr/bin/env python3
"""ImageBatcher throughput against a faithful single-threaded baseline of the reference algorithm.

The baseline is the preprocessing NVIDIA's sample did, written out plainly:
per image, open, convert to RGB, bilinear resize with one scale, paste on a
mean-colour canvas, np.asarray to the model dtype (and transpose for NCHW),
into a zero-initialised batch array, one image after another.

Prints images/s for both on the same generated JPEGs, checks the arrays are
identical (ImageBatcher with --preprocessing nvidia), then does the same for
the opt-in reduced-resolution JPEG decode (draft) on large photos and for the
default AutoML preprocessing (TensorFlow's resize, no antialiasing, exact mean
padding), reporting their pixel differences from the baseline, with its resize compiled (Numba) and in
NumPy (the fallback where Numba is not installed). Last, the batcher's uint8 batches (for graphs made
with create_onnx.py --input_dtype uint8) against its float32 ones: batches/s and bytes per batch side by
side, with the rate of the JPEG decode alone (which no output dtype changes) as their ceiling.
"""

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

from synthetic_images import make_image  # noqa: E402

from efficientdet_trt.core import resize_kernel  # noqa: E402
from image_batcher import AUTOML, NVIDIA, PAD_COLOR, ImageBatcher, Preprocessing, list_images, load_rgb  # noqa: E402


def numpy_resize():
    """The automl resize without its compiled loops, as where Numba is not installed."""
    return mock.patch.object(resize_kernel, "compiled", lambda: None)


def baseline_batches(folder, shape, layout, batch_size, dtype=np.float32):
    """The reference algorithm, single-threaded."""
    height, width = shape
    files = list_images(folder)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch_shape = (batch_size, height, width, 3) if layout == "NHWC" else (batch_size, 3, height, width)
        batch = np.zeros(batch_shape, dtype=dtype)
        for i, path in enumerate(chunk):
            image = Image.open(path).convert(mode="RGB")
            scale = 1.0 / max(image.width / width, image.height / height)
            size = (min(width, max(1, round(image.width * scale))), min(height, max(1, round(image.height * scale))))
            resized = image.resize(size, resample=Image.BILINEAR)
            canvas = Image.new("RGB", (width, height), PAD_COLOR)
            canvas.paste(resized)
            array = np.asarray(canvas, dtype=dtype)
            batch[i] = np.transpose(array, (2, 0, 1)) if layout == "NCHW" else array
        yield batch


def write_jpegs(folder, count, width, height):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image, _ = make_image(width, height, seed=500 + i, num_shapes=6)
        image.save(os.path.join(folder, f"photo_{i:03d}.jpg"), quality=90)


def timed_call(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def timed(batches, count):
    start = time.perf_counter()
    arrays = [b.copy() for b in batches]
    return count / (time.perf_counter() - start), arrays


def compare(label, folder, shape, layout, batch_size, count, repeats, **options):
    options.setdefault("preprocessing", Preprocessing.for_model(NVIDIA))
    best_base = best_ours = 0.0
    for _ in range(repeats):
        rate, base = timed(baseline_batches(folder, shape, layout, batch_size), count)
        best_base = max(best_base, rate)
        rate, ours = timed((b for b, _ in ImageBatcher(folder, shape, layout, batch_size, **options)), count)
        best_ours = max(best_ours, rate)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(base, ours))
    mean_diff = float(np.mean([np.abs(a - b).mean() for a, b in zip(base, ours)]))
    print(f"{label:44s} baseline {best_base:7.1f} img/s | ImageBatcher {best_ours:7.1f} img/s | "
          f"x{best_ours / best_base:4.2f} | max |diff| {diff:.0f}, mean {mean_diff:.3f}")
    return best_ours / best_base


def compare_dtypes(label, folder, shape, layout, batch_size, count, repeats, preprocessing):
    """ImageBatcher's uint8 batches (create_onnx --input_dtype uint8) against its float32 ones, same images."""
    rates, nbytes, batches = {}, {}, {}
    for _ in range(repeats):
        for dtype in (np.float32, np.uint8):
            rate, arrays = timed((b for b, _ in ImageBatcher(folder, shape, layout, batch_size, dtype,
                                                             preprocessing=preprocessing)), count)
            name = np.dtype(dtype).name
            rates[name] = max(rates.get(name, 0.0), rate)
            nbytes[name], batches[name] = arrays[0].nbytes, arrays
    diff = max(float(np.abs(a.astype(np.float32) - b).max()) for a, b in zip(batches["uint8"], batches["float32"]))
    # the JPEG decode every image needs whatever the output dtype, on as many threads as the batcher uses
    files = list_images(folder)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        decode = max(count / timed_call(lambda: list(pool.map(load_rgb, files))) for _ in range(repeats))
    print(f"{label:44s} float32 {rates['float32'] / batch_size:6.1f} batches/s, {nbytes['float32'] / 1e6:5.2f} MB"
          f" | uint8 {rates['uint8'] / batch_size:6.1f} batches/s, {nbytes['uint8'] / 1e6:5.2f} MB | "
          f"x{rates['uint8'] / rates['float32']:4.2f} | max |diff| {diff:.2f}")
    print(f"{'  the JPEG decode alone':44s} {decode / batch_size:6.1f} batches/s: the most any dtype can reach, "
          f"x{decode / rates['float32']:4.2f} float32")


def plain_resize_bilinear_tf(image, new_h, new_w):
    """The automl resize as first written (fancy indexing, a converted copy per step): the reference the
    faster image_batcher.resize_bilinear_tf is checked against. Kept independent on purpose."""
    from image_batcher import _bilinear_taps

    top, bottom, weight_y = _bilinear_taps(image.shape[0], new_h)
    left, right, weight_x = _bilinear_taps(image.shape[1], new_w)

    def along_x(rows):
        start, end = rows[:, left].astype(np.float32), rows[:, right].astype(np.float32)
        return start + (end - start) * weight_x[None, :, None]

    upper, lower = along_x(image[top]), along_x(image[bottom])
    return upper + (lower - upper) * weight_y[:, None, None]


def automl_exactness(folder, shape, count):
    """max |difference| of the batcher's automl resize from the plain formulation, from its NumPy fallback and
    from tf.image.resize (None where TensorFlow is not installed)."""
    try:
        import tensorflow as tf
    except ImportError:
        tf = None
    from image_batcher import automl_fitted_size, resize_bilinear_tf

    from_plain = from_numpy = from_tf = 0.0
    for path in list_images(folder)[:count]:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        new_w, new_h = automl_fitted_size(pixels.shape[1], pixels.shape[0], *shape)
        ours = resize_bilinear_tf(pixels, new_h, new_w)
        from_plain = max(from_plain, float(np.abs(ours - plain_resize_bilinear_tf(pixels, new_h, new_w)).max()))
        with numpy_resize():
            from_numpy = max(from_numpy, float(np.abs(ours - resize_bilinear_tf(pixels, new_h, new_w)).max()))
        if tf is not None:
            theirs = tf.image.resize(tf.cast(pixels, tf.float32), (new_h, new_w), method="bilinear").numpy()
            from_tf = max(from_tf, float(np.abs(ours - theirs).max()))
    from_tf = from_tf if tf is not None else None
    return from_plain, from_numpy, from_tf


def worker_scaling(label, folder, shape, batch_size, count, repeats):
    """automl and nvidia ImageBatcher images/s with 1, 2, half and all cores' worker threads."""
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, max(1, cores // 2), cores})
    for method in (AUTOML, NVIDIA):
        rates = []
        for workers in counts:
            rates.append(max(timed((b for b, _ in ImageBatcher(folder, shape, "NHWC", batch_size, workers=workers,
                                                               preprocessing=Preprocessing.for_model(method))),
                                   count)[0] for _ in range(repeats)))
        print(f"{label + ', ' + method:44s} " + " | ".join(f"{w}: {r:6.1f} img/s" for w, r in zip(counts, rates)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--count", type=int, default=96, help="COCO-sized images (640x480)")
    parser.add_argument("--large", type=int, default=24, help="large photos (3000x2000, 6 MP)")
    parser.add_argument("--size", type=int, default=512, help="model input H and W")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    shape = (args.size, args.size)
    compiled = "compiled (Numba)" if resize_kernel.compiled() else "NumPy (Numba is not installed)"
    print(f"{os.cpu_count()} CPU cores; model input {args.size}x{args.size}, batch {args.batch_size}; "
          f"automl resize {compiled}")
    with tempfile.TemporaryDirectory() as tmp:
        small, large = os.path.join(tmp, "small"), os.path.join(tmp, "large")
        write_jpegs(small, args.count, 640, 480)
        write_jpegs(large, args.large, 3000, 2000)
        for layout in ("NHWC", "NCHW"):
            compare(f"640x480 JPEG, {layout}", small, shape, layout, args.batch_size, args.count, args.repeats)
        compare("3000x2000 JPEG, NHWC", large, shape, "NHWC", args.batch_size, args.large, args.repeats)
        compare("3000x2000 JPEG, NHWC, draft decode", large, shape, "NHWC", args.batch_size, args.large,
                args.repeats, draft=True)
        compare("640x480 JPEG, NHWC, automl preprocessing", small, shape, "NHWC", args.batch_size, args.count,
                args.repeats, preprocessing=Preprocessing())
        compare("3000x2000 JPEG, NHWC, automl preprocessing", large, shape, "NHWC", args.batch_size, args.large,
                args.repeats, preprocessing=Preprocessing())
        with numpy_resize():
            compare("640x480 JPEG, NHWC, automl, NumPy resize", small, shape, "NHWC", args.batch_size, args.count,
                    args.repeats, preprocessing=Preprocessing())
            compare("3000x2000 JPEG, NHWC, automl, NumPy resize", large, shape, "NHWC", args.batch_size,
                    args.large, args.repeats, preprocessing=Preprocessing())
        print("\nimages/s by worker threads:")
        worker_scaling("640x480 JPEG, NHWC", small, shape, args.batch_size, args.count, args.repeats)
        worker_scaling("3000x2000 JPEG, NHWC", large, shape, args.batch_size, args.large, args.repeats)
        for label, folder in (("640x480", small), ("3000x2000", large)):
            from_plain, from_numpy, from_tf = automl_exactness(folder, shape, 8)
            print(f"automl resize of {label} JPEGs: max |diff| from the plain formulation {from_plain:.1e}, "
                  f"from the NumPy one {from_numpy:.1e}, from tf.image.resize "
                  f"{'(TensorFlow not installed)' if from_tf is None else f'{from_tf:.1e}'}")
        print(f"\nuint8 against float32 batches (batch {args.batch_size}; bytes per batch):")
        for method in (AUTOML, NVIDIA):
            compare_dtypes(f"640x480 JPEG, NHWC, {method} preprocessing", small, shape, "NHWC", args.batch_size,
                           args.count, args.repeats, Preprocessing.for_model(method))


if __name__ == "__main__":
    main()
