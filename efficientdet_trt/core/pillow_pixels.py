"""A Pillow RGB image's pixels as a NumPy view of Pillow's own memory, without a copy.

np.asarray(image) goes through Image.tobytes, which copies the whole image while holding the GIL (Pillow's
raw encoder does not release it): 0.2 ms for a 640x480 photo, 1.9 ms for 1920x1080, during which no
other batcher thread runs Python. Pillow (11.2 on) also exports an image through the Arrow C data
interface (Image.__arrow_c_array__): a schema and an array capsule whose buffer is the image's memory,
kept alive by the capsules. An RGB image is exported as fixed-size lists of 4 uint8 per pixel (Pillow
stores RGB as RGBX), so the view is uint8 [h, w * 4]. Pillow exports only images stored in one block,
and stores an image in blocks of at most its block size (16 MB by default: about 4 MP of RGB), so
`one_block_for` raises that size before a bigger photo is decoded. `rgbx_rows` answers None for images
in several blocks, other modes and older Pillows.
"""

import ctypes
import threading

import numpy as np
from PIL import Image

BLOCK_SIZE_CAP = 1 << 30  # Pillow's block size is a C int; photos over 1 GiB (256 MP) stay in several blocks
_block_size_lock = threading.Lock()


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [  # the Arrow C data interface's struct ArrowSchema
    ("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))), ("dictionary", ctypes.POINTER(_ArrowSchema)),
    ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p)]


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [  # struct ArrowArray
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64), ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))), ("dictionary", ctypes.POINTER(_ArrowArray)),
    ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p)]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def one_block_for(width, height):
    """Make Pillow store an RGB image of width x height decoded from now on in one block (so `rgbx_rows` reads
    it in place) by raising its block size, to a multiple of 16 MB, never lowering it.

    A process-wide Pillow setting (what PILLOW_BLOCK_SIZE sets); it changes how Pillow splits an image's
    memory into allocations, not how much memory an image takes (where PILLOW_BLOCKS_MAX has Pillow keep
    freed blocks, it also bounds how big those may be). Left alone where Pillow pads rows to an alignment
    (PILLOW_ALIGNMENT: such images are not exportable anyway) or lacks the setting."""
    core = Image.core
    if not hasattr(core, "set_block_size") or core.get_alignment() != 1:
        return
    needed = -(-width * height * 4 // (16 << 20)) * (16 << 20)
    if core.get_block_size() < needed <= BLOCK_SIZE_CAP:
        with _block_size_lock:  # two threads raising it at once: the bigger size stays
            if core.get_block_size() < needed:
                core.set_block_size(needed)


def rgbx_rows(image):
    """uint8 [h, w * 4] view of an RGB PIL image's memory (R, G, B, padding per pixel), or None where Pillow
    cannot export it so. The view keeps the export (and so the memory) alive as long as it lives."""
    if image.mode != "RGB" or not hasattr(image, "__arrow_c_array__"):
        return None
    width, height = image.size
    try:
        schema_capsule, array_capsule = image.__arrow_c_array__()
    except ValueError:  # "Image rows are not contiguous in memory": stored in several blocks
        return None
    schema = _ArrowSchema.from_address(_capsule_pointer(schema_capsule, b"arrow_schema"))
    array = _ArrowArray.from_address(_capsule_pointer(array_capsule, b"arrow_array"))
    if (schema.format != b"+w:4" or schema.n_children != 1 or schema.children[0].contents.format != b"C"
            or array.n_children != 1 or array.offset != 0 or array.length != width * height):
        return None
    pixels = array.children[0].contents
    if pixels.offset != 0 or pixels.length != width * height * 4 or pixels.n_buffers != 2:
        return None
    memory = (ctypes.c_uint8 * (width * height * 4)).from_address(pixels.buffers[1])
    memory._export = (schema_capsule, array_capsule)  # released (and Pillow's memory with them) with the view
    return np.ctypeslib.as_array(memory).reshape(height, width * 4)
