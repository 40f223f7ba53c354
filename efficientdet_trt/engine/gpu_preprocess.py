"""Images decoded and letterboxed on the GPU, written straight into a device buffer (an engine's input).

Decoding: nvImageCodec (`nvidia-nvimgcodec-cu13`, NVIDIA's decode library: nvJPEG on the GPU for JPEG,
EXIF orientation applied), batched; a file it cannot decode is read by Pillow (as the CPU batcher reads it)
and copied up; one neither can read is skipped with a warning, as on the CPU.

Letterbox: one small CUDA kernel, compiled at run time by NVRTC through cuda-python (which the TensorRT
runner already uses: no extra package), does the `automl` and `tfod` arithmetic of image_batcher.fit_into:
the size from automl_fitted_size / tfod_fitted_size (on the host), TensorFlow's bilinear taps (half-pixel,
or TF1's legacy ones) and lerps in float32 in the same order, compiled with --fmad=false so no
multiply-add is fused and every step rounds as NumPy's does, padding with the method's colour, float32 or
uint8 (rint, clipped), NHWC or NCHW. On the same decoded pixels it equals the CPU batcher bit for bit
(tests/test_gpu.py). The `nvidia` method (Pillow's resize, which antialiases when shrinking) runs as Pillow's
own integer passes (pillow_resize.py: its coefficient tables and pass order; a second kernel runs each pass into
scratch device memory), then the letterbox kernel copies the result in and pads: equal to Pillow's result on
the same decoded pixels, bit for bit.

Nothing here runs without an NVIDIA driver; `unavailable_reason()` says why it cannot be used.
"""

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from efficientdet_trt.engine import pillow_resize
from image_batcher import (
    AUTOML,
    NVIDIA,
    TFOD,
    ImageBatcher,
    ImageInfo,
    Preprocessing,
    automl_fitted_size,
    fitted_size,
    list_images,
    load_rgb,
    tfod_fitted_size,
)

log = logging.getLogger("gpu_preprocess")

GPU_REQUIREMENTS = "requirements-gpu.txt"
KERNEL_NAME = b"letterbox"
BLOCK = (32, 8, 1)

KERNEL_SOURCE = r"""
extern "C" __global__ void letterbox(
    const unsigned char* src, int src_h, int src_w, long long row_bytes,
    void* dst, int out_h, int out_w, int new_h, int new_w,
    float pad0, float pad1, float pad2, int nchw, int as_uint8, int half_pixel)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    float value[3] = {pad0, pad1, pad2};
    if (x < new_w && y < new_h) {
        /* image_batcher._bilinear_taps, per axis, in float32 */
        float scale_y = (float)src_h / (float)new_h;
        float pos_y = half_pixel ? ((float)y + 0.5f) * scale_y - 0.5f : (float)y * scale_y;
        float floor_y = floorf(pos_y);
        int top = max((int)floor_y, 0);
        int bottom = (int)fminf(ceilf(pos_y), (float)(src_h - 1));
        float dy = pos_y - floor_y;
        float scale_x = (float)src_w / (float)new_w;
        float pos_x = half_pixel ? ((float)x + 0.5f) * scale_x - 0.5f : (float)x * scale_x;
        float floor_x = floorf(pos_x);
        int left = max((int)floor_x, 0);
        int right = (int)fminf(ceilf(pos_x), (float)(src_w - 1));
        float dx = pos_x - floor_x;
        const unsigned char* upper = src + (long long)top * row_bytes;
        const unsigned char* lower = src + (long long)bottom * row_bytes;
        for (int c = 0; c < 3; ++c) {
            /* resize_bilinear_tf: x first, start + (end - start) * d */
            float ul = (float)upper[left * 3 + c], ur = (float)upper[right * 3 + c];
            float ll = (float)lower[left * 3 + c], lr = (float)lower[right * 3 + c];
            float t = ul + (ur - ul) * dx;
            float b = ll + (lr - ll) * dx;
            value[c] = t + (b - t) * dy;
        }
    }
    for (int c = 0; c < 3; ++c) {
        long long index = nchw ? ((long long)c * out_h + y) * out_w + x : ((long long)y * out_w + x) * 3 + c;
        if (as_uint8) {
            ((unsigned char*)dst)[index] = (unsigned char)fminf(fmaxf(rintf(value[c]), 0.0f), 255.0f);
        } else {
            ((float*)dst)[index] = value[c];
        }
    }
}

extern "C" __global__ void pillow_pass(
    const unsigned char* src, long long src_row_bytes, unsigned char* dst, long long dst_row_bytes,
    int out_h, int out_w, const int* table, int ksize, int vertical)
{
    /* One 8-bit pass of Pillow's resize (pillow_resize.py): table = first tap [n], tap count [n],
       weights [n, ksize] (int32, 22 fraction bits) for the n output rows (vertical) or columns */
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    int n = vertical ? out_h : out_w;
    int j = vertical ? y : x;
    int first = table[j], count = table[n + j];
    const int* weights = table + 2 * n + (long long)j * ksize;
    for (int c = 0; c < 3; ++c) {
        int sum = 1 << 21;
        for (int i = 0; i < count; ++i) {
            long long at = vertical ? (long long)(first + i) * src_row_bytes + x * 3 + c
                                    : (long long)y * src_row_bytes + (first + i) * 3 + c;
            sum += (int)src[at] * weights[i];
        }
        int value = sum >> 22;
        dst[(long long)y * dst_row_bytes + x * 3 + c] = (unsigned char)(value < 0 ? 0 : (value > 255 ? 255 : value));
    }
}
"""
PILLOW_KERNEL_NAME = b"pillow_pass"
ALIGN = 256  # bytes: each scratch buffer starts on this boundary


def unavailable_reason():
    """None when GPU decoding and letterboxing can run here, else why not (one line)."""
    try:
        from cuda.bindings import runtime  # pyright: ignore[reportAttributeAccessIssue]
    except ImportError:
        return f"cuda-python is not installed (pip install -r {GPU_REQUIREMENTS})"
    error, count = runtime.cudaGetDeviceCount()
    if error != runtime.cudaError_t.cudaSuccess or count < 1:
        return "no CUDA device"
    try:
        from nvidia import nvimgcodec  # noqa: F401  # pyright: ignore[reportMissingImports]
    except ImportError:
        return f"nvImageCodec is not installed (pip install -r {GPU_REQUIREMENTS})"
    try:
        from cuda.bindings import nvrtc  # pyright: ignore[reportAttributeAccessIssue]

        nvrtc.nvrtcVersion()
    except Exception as error:  # the bindings raise their own types when libnvrtc is missing
        return f"NVRTC cannot be loaded ({type(error).__name__}; pip install -r {GPU_REQUIREMENTS})"
    return None


CHOICES = ("auto", "cpu", "gpu")


def add_device_argument(parser):
    """The scripts' --preprocess_on option."""
    parser.add_argument("--preprocess_on", choices=CHOICES, default="auto",
                        help="where images are decoded and letterboxed for an --engine: gpu (nvImageCodec and a "
                        "CUDA kernel, straight into the engine's input), cpu (the image batcher), auto (gpu when "
                        f"its packages ({GPU_REQUIREMENTS}) and a GPU are there, else cpu, saying why)")


def engine_for_gpu(choice, runner, preprocessing):
    """`runner` when images go to it through the GPU path (a TensorRT runner), else None; a fallback under
    `auto` says why in one log line, under `gpu` it is an error."""
    from efficientdet_trt.core.common import UserError
    from efficientdet_trt.engine.tensorrt_runner import TensorRTRunner

    if choice == "cpu":
        return None
    if not isinstance(runner, TensorRTRunner):
        if choice == "gpu":
            raise UserError("--preprocess_on gpu feeds a TensorRT engine's input on the GPU: give --engine")
        return None
    reason = unavailable_reason()
    if reason:
        if choice == "gpu":
            raise UserError(f"--preprocess_on gpu: {reason}")
        log.info("preprocessing on the CPU: %s", reason)
        return None
    log.info("preprocessing on the GPU (nvImageCodec decode, letterbox kernel)")
    return runner


def batcher_for(runner, choice, preprocessing, input_path, batch_size, draft=False, **options):
    """(batcher, engine) for a script's --preprocess_on `choice`: a GpuImageBatcher writing into the engine's
    input (run it with engine.infer_device()), or the CPU ImageBatcher and None (run runner.infer)."""
    engine = engine_for_gpu(choice, runner, preprocessing)
    if engine:
        return GpuImageBatcher.for_engine(engine, input_path, batch_size, preprocessing=preprocessing,
                                          **options), engine
    return ImageBatcher(input_path, runner.input_hw, runner.input_layout, batch_size, runner.input_spec().dtype,
                        draft=draft, preprocessing=preprocessing, **options), None


def _check(result, what):
    """cuda-python calls return (error, values...): the values, or RuntimeError naming the call."""
    error = result[0]
    if int(error) != 0:
        raise RuntimeError(f"{what} failed: {error}")
    rest = result[1:]
    return rest[0] if len(rest) == 1 else rest


class Letterbox:
    """The letterbox kernel, compiled once for the current device (NVRTC, --fmad=false)."""

    def __init__(self):
        from cuda.bindings import driver, nvrtc, runtime  # pyright: ignore[reportAttributeAccessIssue]

        self.driver = driver
        _check(runtime.cudaFree(0), "cudaFree(0)")  # makes the runtime's primary context current
        device = _check(runtime.cudaGetDevice(), "cudaGetDevice")
        major = _check(runtime.cudaDeviceGetAttribute(
            runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute")
        minor = _check(runtime.cudaDeviceGetAttribute(
            runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute")
        program = _check(nvrtc.nvrtcCreateProgram(KERNEL_SOURCE.encode(), b"letterbox.cu", 0, [], []),
                         "nvrtcCreateProgram")
        options = [b"--fmad=false", f"--gpu-architecture=sm_{major}{minor}".encode()]
        result = nvrtc.nvrtcCompileProgram(program, len(options), options)
        if int(result[0]) != 0:
            size = _check(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
            text = b" " * size
            nvrtc.nvrtcGetProgramLog(program, text)
            raise RuntimeError(f"NVRTC could not compile the letterbox kernel: {text.decode(errors='replace')}")
        size = _check(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
        nvrtc.nvrtcDestroyProgram(program)
        self.module = _check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        self.kernel = _check(driver.cuModuleGetFunction(self.module, KERNEL_NAME), "cuModuleGetFunction")
        self.pillow_kernel = _check(driver.cuModuleGetFunction(self.module, PILLOW_KERNEL_NAME),
                                    "cuModuleGetFunction")
        log.debug("letterbox kernel compiled for sm_%d%d", major, minor)

    def launch(self, source, source_hw, row_bytes, target, out_hw, new_hw, pad, layout, dtype, stream,
               half_pixel=True):
        """Letterbox the uint8 RGB image at device pointer `source` into the [H, W] slot at `target`
        (half_pixel: the automl taps; False: tfod's)."""
        values = [np.array([source], np.uint64), np.array([source_hw[0]], np.int32),
                  np.array([source_hw[1]], np.int32), np.array([row_bytes], np.int64),
                  np.array([target], np.uint64), np.array([out_hw[0]], np.int32), np.array([out_hw[1]], np.int32),
                  np.array([new_hw[0]], np.int32), np.array([new_hw[1]], np.int32),
                  *(np.array([value], np.float32) for value in pad),
                  np.array([layout == "NCHW"], np.int32), np.array([np.dtype(dtype) == np.uint8], np.int32),
                  np.array([half_pixel], np.int32)]
        self._launch(self.kernel, values, out_hw, stream)

    def pillow_pass(self, source, row_bytes, target, target_row_bytes, out_hw, table, ksize, vertical, stream):
        """One pass of Pillow's resize from the uint8 RGB image at `source` into the uint8 [out_hw] image at
        `target`; `table`: the device pointer of pillow_resize.coefficients packed as int32."""
        values = [np.array([source], np.uint64), np.array([row_bytes], np.int64), np.array([target], np.uint64),
                  np.array([target_row_bytes], np.int64), np.array([out_hw[0]], np.int32),
                  np.array([out_hw[1]], np.int32), np.array([table], np.uint64), np.array([ksize], np.int32),
                  np.array([vertical], np.int32)]
        self._launch(self.pillow_kernel, values, out_hw, stream)

    def _launch(self, kernel, values, out_hw, stream):
        addresses = np.array([value.ctypes.data for value in values], np.uint64)
        grid = ((out_hw[1] + BLOCK[0] - 1) // BLOCK[0], (out_hw[0] + BLOCK[1] - 1) // BLOCK[1], 1)
        _check(self.driver.cuLaunchKernel(kernel, *grid, *BLOCK, 0, self.driver.CUstream(int(stream)),
                                          addresses.ctypes.data, 0), "cuLaunchKernel")


@functools.lru_cache(maxsize=None)
def compiled_letterbox():
    """The letterbox kernel, compiled once per process."""
    return Letterbox()


@functools.lru_cache(maxsize=None)
def shared_decoder():
    """One nvImageCodec decoder per process: its first decode sets up nvJPEG (hundreds of ms)."""
    from nvidia import nvimgcodec  # pyright: ignore[reportMissingImports]

    return nvimgcodec.Decoder()


def _device_array(image):
    """(pointer, (height, width), row bytes) of an interleaved uint8 RGB nvImageCodec device image."""
    interface = image.__cuda_array_interface__
    height, width = interface["shape"][:2]
    strides = interface.get("strides") or (width * 3, 3, 1)
    return int(interface["data"][0]), (height, width), int(strides[0])


class PillowResize:
    """The `nvidia` method's resize on the GPU, as Pillow's Image.resize(BILINEAR) computes it: pillow_resize's
    coefficient tables and pass order, each pass one launch of the pillow_pass kernel."""

    def __init__(self, cuda, stream, letterbox):
        self.cuda, self.stream, self.letterbox = cuda, stream, letterbox
        self._scratch, self._scratch_bytes = None, 0

    def __call__(self, sources, sizes):
        """Each (pointer, (h, w), row bytes) uint8 RGB device image resized to its (new_h, new_w) in `sizes`:
        the coefficient tables uploaded once, one kernel launch per pass, on the stream, into scratch device
        memory; returns the resized images likewise. Call it again only once the stream has finished the
        previous call's kernels (their scratch is reused)."""
        tables, steps, used = [], [], 0  # per image, per pass: (vertical, table offset, taps, shape after it)
        for (_, (height, width), _), (new_h, new_w) in zip(sources, sizes):
            shape, plan = (height, width), []
            for name in pillow_resize.passes(width, height, new_w, new_h):
                vertical = name == "vertical"
                first, count, weights = pillow_resize.coefficients(shape[0] if vertical else shape[1],
                                                                   new_h if vertical else new_w)
                table = np.concatenate([first, count, weights.ravel()])
                shape = (new_h, shape[1]) if vertical else (shape[0], new_w)
                plan.append((vertical, used, weights.shape[1], shape))
                tables.append(table)
                used += -(-table.nbytes // ALIGN) * ALIGN
            steps.append(plan)
        table_bytes, outputs = used, []  # after the tables, per image one buffer per pass (the last: the result)
        for plan in steps:
            outputs.append([])
            for *_, (height, width) in plan:
                outputs[-1].append(used)
                used += -(-(height * width * 3) // ALIGN) * ALIGN
        if used > self._scratch_bytes:
            if self._scratch is not None:
                self.cuda.free(self._scratch)
            self._scratch, self._scratch_bytes = self.cuda.malloc(used), used
        if tables:
            packed = np.zeros(table_bytes // 4, np.int32)
            for (_, offset, _, _), table in zip((step for plan in steps for step in plan), tables):
                packed[offset // 4: offset // 4 + table.size] = table
            self.cuda.copy_to_device(self._scratch, packed, self.stream)  # pageable: staged before it returns
        stream = self.cuda.stream_handle(self.stream)
        resized = []
        for plan, offsets, (pointer, shape, row_bytes) in zip(steps, outputs, sources):
            for (vertical, table, ksize, shape), at in zip(plan, offsets):
                target = self._scratch + at
                self.letterbox.pillow_pass(pointer, row_bytes, target, shape[1] * 3, shape, self._scratch + table,
                                           ksize, vertical, stream)
                pointer, row_bytes = target, shape[1] * 3
            resized.append((pointer, shape, row_bytes))
        return resized

    def close(self):
        if self._scratch is not None:
            self.cuda.free(self._scratch)
            self._scratch, self._scratch_bytes = None, 0


class GpuImageBatcher:
    """Batches decoded and letterboxed on the GPU into a device buffer: the CPU ImageBatcher's iteration.

    `target(count)` returns the device pointer of a batch buffer for `count` images (for an engine: its
    input binding); each iteration fills it on `stream` and yields (count, [ImageInfo]) once the work is
    queued; rows past `count` in the last batch are zeroed, as the CPU batcher zero-pads. `cuda` is a
    cuda_memory backend (cuda-python).
    """

    def __init__(self, input_path, shape, layout, batch_size, dtype, cuda, stream, target, max_num_images=None,
                 recursive=False, workers=None, preprocessing=Preprocessing()):
        from nvidia import nvimgcodec  # pyright: ignore[reportMissingImports]

        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.nvimgcodec = nvimgcodec
        self.height, self.width = shape
        self.layout = layout
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        self.cuda, self.stream, self.target = cuda, stream, target
        self.pad = tuple(float(v) for v in (np.rint(preprocessing.pad) if self.dtype.kind in "iu"
                                            else preprocessing.pad))
        self.method = preprocessing.method
        self.half_pixel = self.method != TFOD  # (nvidia: the letterbox kernel only copies Pillow's result)
        self.fitted_size = {AUTOML: automl_fitted_size, TFOD: tfod_fitted_size, NVIDIA: fitted_size}[self.method]
        files = list_images(input_path, recursive)
        self.files = files[:max_num_images] if max_num_images else files
        self.skipped = []
        self.decoder = shared_decoder()
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.SRGB,
                                              sample_format=nvimgcodec.SampleFormat.I_RGB)
        self.letterbox = compiled_letterbox()
        self.pillow_resize = PillowResize(cuda, stream, self.letterbox) if self.method == NVIDIA else None
        self.readers = ThreadPoolExecutor(workers or os.cpu_count() or 1, thread_name_prefix="gpu-batcher-read")
        self._alive = []  # decoded images, kept until the kernels that read them have run
        self._reusable = []  # the previous batch's decoded images: their device buffers are reused

    @classmethod
    def for_engine(cls, runner, input_path, batch_size, **options):
        """Batches written into a TensorRTRunner's input binding, on its stream."""
        spec = runner.input_spec()
        return cls(input_path, runner.input_hw, runner.input_layout, batch_size, spec.dtype, runner.cuda,
                   runner.stream, runner.device_input, **options)

    def __len__(self):
        return (len(self.files) + self.batch_size - 1) // self.batch_size

    @property
    def slot_bytes(self):
        return self.height * self.width * 3 * self.dtype.itemsize

    def _read(self, path):
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as error:
            return error

    def _decode(self, paths, payloads):
        """Device images (or None) for `paths`: nvImageCodec in one batch, Pillow for what it cannot decode."""
        sources = [self.nvimgcodec.CodeStream(data) if isinstance(data, bytes) else None for data in payloads]
        wanted = [index for index, source in enumerate(sources) if source is not None]
        images = [None] * len(paths)
        if wanted:
            reuse = self._reusable[:len(wanted)] if len(self._reusable) >= len(wanted) else None
            decoded = self.decoder.decode([sources[i] for i in wanted], images=reuse, params=self.params,
                                          cuda_stream=self.cuda.stream_handle(self.stream))
            self._reusable = [image for image in decoded if image is not None] if reuse is None else self._reusable
            for index, image in zip(wanted, decoded):
                images[index] = image
        for index, path in enumerate(paths):
            if images[index] is None:
                try:  # what nvImageCodec cannot decode, Pillow may (as the CPU batcher reads it)
                    pixels = np.ascontiguousarray(np.asarray(load_rgb(path)[0]))
                    images[index] = self.nvimgcodec.as_image(pixels).cuda()
                except Exception as error:  # PIL raises many types for broken files
                    log.warning("skipping unreadable image %s (%s)", path, error)
                    self.skipped.append(path)
        return images

    def _submit_reads(self, start):
        """Start reading the batch of files from index `start` in the reader threads: (paths, futures)."""
        paths = self.files[start:start + self.batch_size]
        return paths, [self.readers.submit(self._read, path) for path in paths]

    def __iter__(self):
        pending = self._submit_reads(0) if self.files else None
        start = self.batch_size
        while pending:
            paths, futures = pending
            payloads = [future.result() for future in futures]
            pending = None
            if start < len(self.files):  # read the next batch's files while this one is on the GPU
                pending = self._submit_reads(start)
                start += self.batch_size
            self.cuda.synchronize(self.stream)  # the previous batch's kernels are done with the images reused
            images = self._decode(paths, payloads)
            kept = [(path, image) for path, image in zip(paths, images) if image is not None]
            if not kept:
                continue
            self._alive = [image for _, image in kept]
            target = self.target(len(kept))
            infos, sources, sizes = [], [], []
            for path, image in kept:
                sources.append(_device_array(image))
                src_h, src_w = sources[-1][1]
                new_w, new_h = self.fitted_size(src_w, src_h, self.height, self.width)
                sizes.append((new_h, new_w))
                infos.append(ImageInfo(path, src_w, src_h, new_w / src_w, new_h / src_h))
            if self.pillow_resize is not None:  # nvidia: resized as Pillow does; the letterbox kernel then copies
                sources = self.pillow_resize(sources, sizes)
            for row, ((pointer, source_hw, row_bytes), new_hw) in enumerate(zip(sources, sizes)):
                self.letterbox.launch(pointer, source_hw, row_bytes, target + row * self.slot_bytes,
                                      (self.height, self.width), new_hw, self.pad, self.layout, self.dtype,
                                      self.cuda.stream_handle(self.stream), self.half_pixel)
            yield len(kept), infos
        if self.skipped:
            log.warning("skipped %d unreadable image(s)", len(self.skipped))

    def close(self):
        self.readers.shutdown(wait=False, cancel_futures=True)
        self._alive, self._reusable = [], []
        if self.pillow_resize is not None:
            self.pillow_resize.close()
