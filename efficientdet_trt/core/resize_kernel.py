"""TensorFlow's bilinear resize (image_batcher.resize_bilinear_tf) as one compiled loop, through Numba.

The same float32 arithmetic in the same order as the NumPy formulation in image_batcher (the taps:
(x + 0.5) * in/out - 0.5, or x * in/out for TF1's legacy resize; then x first: start + (end - start) * dx
for each used source row, then upper + (lower - upper) * dy), so both give TensorFlow's values to the
bit; Numba compiles without fast-math, so no multiply-add is fused. What it saves over NumPy: no float32
temporaries of the gathered taps, the uint8 source read in place, uint8 outputs rounded in the same loop
(half to even, as np.rint) instead of through a float32 copy, and, per image, the taps computed and the
padding written inside compiled loops rather than by small NumPy calls that hold the GIL (0.1-0.2 ms an
image, which is what kept 16 worker threads from going faster than 8). The loops release the GIL, so the batcher's worker
threads run them side by side. Compiled once per machine on first use (Numba's cache beside this file,
or its user-wide cache where that is read-only); without Numba, `compiled()` is None and image_batcher
keeps NumPy.
"""

import functools
import logging
from typing import Any, NamedTuple

log = logging.getLogger("image_batcher")


class Kernels(NamedTuple):
    resize: Any  # resize(rows, row_at, in_h, in_w, new_h, new_w, half_pixel, pixel_bytes, out, planar, rounded)
    taps: Any  # taps(in_size, out_size, half_pixel) -> (lower, upper, weight), as image_batcher._bilinear_taps
    fill: Any  # fill(out, new_h, new_w, pad, planar): the padding around the image, as image_batcher.pad_around


@functools.cache
def compiled():
    """The compiled `Kernels`, or None where Numba is not installed."""
    try:
        import numba
        import numpy as np
    except ImportError:
        log.debug("numba is not installed: the automl resize runs in NumPy (same values, slower)")
        return None

    @numba.njit(nogil=True, cache=True)
    def taps(in_size, out_size, half_pixel):
        """Per output index, its two source indices (lower, upper) and the weight of the upper one, in float32
        as image_batcher._bilinear_taps computes them."""
        lower = np.empty(out_size, np.intp)
        upper = np.empty(out_size, np.intp)
        weight = np.empty(out_size, np.float32)
        scale = np.float32(in_size) / np.float32(out_size)
        for i in range(out_size):
            if half_pixel:
                position = (np.float32(i) + np.float32(0.5)) * scale - np.float32(0.5)
            else:
                position = np.float32(i) * scale
            floor = np.floor(position)
            lower[i] = max(int(floor), 0)
            upper[i] = min(int(np.ceil(position)), in_size - 1)
            weight[i] = position - floor
        return lower, upper, weight

    @numba.njit(nogil=True, cache=True)
    def fill(out, new_h, new_w, pad, planar):
        """Write the colour `pad` (3 values of out's dtype) all over out, [H, W, 3] or (planar) [3, H, W],
        outside its top-left new_h x new_w."""
        if planar:
            for c in range(3):
                for y in range(out.shape[1]):
                    for x in range(new_w if y < new_h else 0, out.shape[2]):
                        out[c, y, x] = pad[c]
        else:
            for y in range(out.shape[0]):
                for x in range(new_w if y < new_h else 0, out.shape[1]):
                    for c in range(3):
                        out[y, x, c] = pad[c]

    @numba.njit(nogil=True, cache=True)
    def store(target, values, rounded):
        """target[j] = values[j], rounded half to even (as np.rint) and clipped to 0..255 when `rounded`."""
        if rounded:
            for j in range(len(values)):
                target[j] = min(max(np.rint(values[j]), np.float32(0)), np.float32(255))
        else:
            for j in range(len(values)):
                target[j] = values[j]

    @numba.njit(nogil=True, cache=True)
    def resize(rows, row_at, in_h, in_w, new_h, new_w, half_pixel, pixel_bytes, out, planar, rounded):
        """rows: uint8 [n, w * pixel_bytes], RGB (3) or RGBX (4) pixels; row_at: per source row, its index in
        `rows` (only the rows the output reads need one). out: a C-contiguous [H, W, 3] (planar=False) or
        [3, H, W] (planar=True) float32 array (exact values), or uint8 with rounded=True (rounded half to
        even, as np.rint, and clipped); its top-left new_h x new_w is written."""
        top, bottom, weight_y = taps(in_h, new_h, half_pixel)
        left, right, weight_x = taps(in_w, new_w, half_pixel)
        # source row r interpolated along x, in slot r % 2 (slot_row says which row a slot holds): an output
        # row reads rows top and bottom, at most one apart, and neither ever goes back, so each is done once
        across = np.empty((2, new_w * 3), np.float32)
        slot_row = np.full(2, -1, np.intp)
        line = np.empty(new_w * 3, np.float32)
        plane = np.empty(new_w, np.float32)
        for y in range(new_h):
            for source in (top[y], bottom[y]):
                if slot_row[source % 2] != source:
                    row, slot = rows[row_at[source]], across[source % 2]
                    for x in range(new_w):
                        a, b, dx = left[x] * pixel_bytes, right[x] * pixel_bytes, weight_x[x]
                        for c in range(3):
                            start = np.float32(row[a + c])
                            slot[3 * x + c] = start + (np.float32(row[b + c]) - start) * dx
                    slot_row[source % 2] = source
            upper, lower, dy = across[top[y] % 2], across[bottom[y] % 2], weight_y[y]
            for j in range(new_w * 3):
                line[j] = upper[j] + (lower[j] - upper[j]) * dy
            if planar:
                for c in range(3):
                    for x in range(new_w):
                        plane[x] = line[3 * x + c]
                    store(out[c, y, :new_w], plane, rounded)
            else:
                store(out[y, :new_w].reshape(new_w * 3), line, rounded)

    return Kernels(resize, taps, fill)
