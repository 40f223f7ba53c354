"""TensorFlow's bilinear resize (image_batcher.resize_bilinear_tf) as one compiled loop, through Numba.

The same float32 arithmetic in the same order as the NumPy formulation in image_batcher (x first:
start + (end - start) * dx for each used source row, then upper + (lower - upper) * dy), so both
give TensorFlow's values to the bit; Numba compiles without fast-math, so no multiply-add is fused.
What it saves over NumPy: no float32 temporaries of the gathered taps, the uint8 source read
in place, and uint8 outputs rounded in the same loop (half to even, as np.rint) instead of
through a float32 copy. The loops release the GIL, so the batcher's worker threads run them side
by side. Compiled once per machine on first use (Numba's cache beside this file, or its user-wide
cache where that is read-only); without Numba, `compiled()` is None and image_batcher keeps NumPy.
"""

import functools
import logging

log = logging.getLogger("image_batcher")


@functools.cache
def compiled():
    """The compiled `bilinear(rows, used, top, bottom, weight_y, left, right, weight_x, out, planar, rounded)`,
    or None."""
    try:
        import numba
        import numpy as np
    except ImportError:
        log.debug("numba is not installed: the automl resize runs in NumPy (same values, slower)")
        return None

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
    def bilinear(rows, used, top, bottom, weight_y, left, right, weight_x, out, planar, rounded):
        """rows: uint8 [n, w * 3] (RGB) or [n, w * 4] (RGBX); used: the rows (indices into `rows`) that the
        output reads; top/bottom: per output row, its two source rows as indices into `used`; left/right: per
        output pixel, the byte offsets of its two taps in a row; weight_x: per output pixel. out: a
        C-contiguous [H, W, 3] (planar=False) or [3, H, W] (planar=True) float32 array (exact values), or
        uint8 with rounded=True (rounded half to even, as np.rint, and clipped); its top-left
        len(top) x len(left) is written."""
        new_h, new_w = len(top), len(left)
        across = np.empty((2, new_w * 3), np.float32)  # used row k interpolated along x, in slot k % 2
        ready = 0  # used rows 0..ready-1 are done: `top` and `bottom` never go back, nor apart by more than one
        line = np.empty(new_w * 3, np.float32)
        plane = np.empty(new_w, np.float32)
        for y in range(new_h):
            while ready <= bottom[y]:
                row, slot = rows[used[ready]], across[ready % 2]
                for x in range(new_w):
                    a, b, dx = left[x], right[x], weight_x[x]
                    for c in range(3):
                        start = np.float32(row[a + c])
                        slot[3 * x + c] = start + (np.float32(row[b + c]) - start) * dx
                ready += 1
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

    return bilinear
