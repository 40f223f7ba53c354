"""Pillow's bilinear resize of an RGB image (the `nvidia` preprocessing's Image.resize) as data for a GPU
kernel: its fixed-point coefficients per output row or column, and which of its two passes runs first.

Read from Pillow's src/libImaging/Resample.c (13.0.0): precompute_coeffs (a triangle filter stretched by
the reduction factor, so shrinking antialiases; taps from (int)(centre -/+ support + 0.5), weights in
double, summed in order and divided by their sum), normalize_coeffs_8bpc (weights * 2**22 rounded half
away from zero to int32) and the 8-bit passes (int32 sums from 2**21, >> 22, clipped to 0..255, each pass
written as uint8). Each axis is resized only if its size changes. Pillow 13 runs the vertical pass first when
the height shrinks by more than twice as many pixels as the width; earlier Pillows always start
horizontally. `resize` is the same arithmetic in NumPy: tests/test_image_batcher.py holds it to Pillow's
own result, bit for bit, so the GPU kernel (gpu_preprocess.py) has a reference that runs without a GPU.
"""

import functools
import math

import numpy as np
from PIL import Image

PRECISION_BITS = 22  # 32 - 8 - 2, as Resample.c
PILLOW_MAJOR = int(Image.__version__.split(".")[0])


@functools.lru_cache(maxsize=256)
def coefficients(in_size, out_size):
    """(first tap int32 [out_size], tap count int32 [out_size], weights int32 [out_size, ksize]) of one axis."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    centre = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), in_size) - first
    offsets = np.arange(ksize)
    distance = np.abs(((first[:, None] + offsets) - centre[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where((distance < 1.0) & (offsets < count[:, None]), 1.0 - distance, 0.0)
    total = np.zeros(out_size)
    for column in range(ksize):  # summed in order, as the C loop does (np.sum would pair them)
        total = total + weights[:, column]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    return first.astype(np.int32), count.astype(np.int32), fixed


def passes(in_w, in_h, out_w, out_h):
    """The passes Image.resize runs, in order: "horizontal", "vertical", both or none."""
    order = []
    if out_w != in_w:
        order.append("horizontal")
    if out_h != in_h:
        shrink_h, shrink_w = in_h - out_h, in_w - out_w
        vertical_first = PILLOW_MAJOR >= 13 and shrink_h > 0 and shrink_h > 2 * shrink_w
        order.insert(0 if vertical_first else len(order), "vertical")
    return order


def _pass(pixels, axis, out_size):
    """One 8-bit pass of uint8 [h, w, 3] along axis 0 (vertical) or 1 (horizontal)."""
    first, count, weights = coefficients(pixels.shape[axis], out_size)
    moved = np.moveaxis(pixels, axis, 0).astype(np.int64)
    total = np.full((out_size,) + moved.shape[1:], 1 << (PRECISION_BITS - 1), np.int64)
    for tap in range(weights.shape[1]):
        index = np.minimum(first + tap, pixels.shape[axis] - 1)  # taps past `count` have weight 0
        total += moved[index] * weights[:, tap].reshape((-1,) + (1,) * (moved.ndim - 1))
    return np.moveaxis(np.clip(total >> PRECISION_BITS, 0, 255).astype(np.uint8), 0, axis)


def resize(pixels, out_w, out_h):
    """uint8 [h, w, 3] -> uint8 [out_h, out_w, 3] as Image.fromarray(pixels).resize((out_w, out_h),
    Image.BILINEAR) computes it, in NumPy."""
    for name in passes(pixels.shape[1], pixels.shape[0], out_w, out_h):
        pixels = _pass(pixels, 1, out_w) if name == "horizontal" else _pass(pixels, 0, out_h)
    return np.ascontiguousarray(pixels)
