"""The CUDA side on a real GPU: cuda_memory, the TensorRT runner's buffers (io_buffers), the letterbox kernel
against the CPU batcher, GPU decoding.

Marked `gpu`: without a CUDA device (CI) every test here skips with the reason. Run them on a GPU machine
with `python -m pytest -m gpu tests/test_gpu.py` after `pip install -r requirements-gpu.txt` (README, Tests).
"""

import numpy as np
import pytest
from PIL import Image
from synthetic_images import make_image

from efficientdet_trt.core.common import UserError
from efficientdet_trt.engine import cuda_memory, gpu_preprocess, io_buffers
from efficientdet_trt.engine.trt_adapter import IOTensor
from image_batcher import (
    ImageBatcher,
    Preprocessing,
    automl_fitted_size,
    fit_into,
    fitted_size,
    load_rgb,
    tfod_fitted_size,
)


def _device_count():
    try:
        return cuda_memory.load_cuda().device_count()
    except UserError:
        return 0


HAS_GPU = _device_count() > 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device (none on this machine)")]


def _nvimgcodec_reason():
    return gpu_preprocess.unavailable_reason() if HAS_GPU else "no CUDA device"


@pytest.fixture(scope="module")
def cuda():
    backend = cuda_memory.CudaPython()
    stream = backend.create_stream()
    yield backend, stream
    backend.destroy_stream(stream)


@pytest.fixture(scope="module", params=["cuda-python", "pycuda"])
def any_backend(request):
    """Each CUDA backend cuda_memory offers; pycuda only where it was built (it is an sdist)."""
    if request.param == "pycuda":
        pytest.importorskip("pycuda.driver", reason="pycuda is not installed (sdist only: build it with nvcc)")
        backend = cuda_memory.PyCuda()
    else:
        backend = cuda_memory.CudaPython()
    stream = backend.create_stream()
    yield backend, stream
    backend.destroy_stream(stream)


def test_pinned_device_round_trip_and_cuda_graph_replay(any_backend):
    backend, stream = any_backend
    data = np.random.default_rng(3).uniform(0, 255, (4, 64, 96, 3)).astype(np.float32)
    source, back = backend.pinned_empty(data.shape, np.float32), backend.pinned_empty(data.shape, np.float32)
    device = backend.malloc(data.nbytes)
    try:
        source[...] = data
        back.fill(np.nan)
        backend.copy_to_device(device, source, stream)
        backend.copy_to_host(back, device, stream)
        backend.synchronize(stream)
        assert np.array_equal(back, data)
        if not backend.supports_graphs:  # pycuda: TensorRTRunner runs without CUDA graphs there
            return
        backend.begin_capture(stream)
        backend.copy_to_device(device, source, stream)
        backend.copy_to_host(back, device, stream)
        graph = backend.end_capture(stream)
        source[...] = data[::-1]  # the graph copies whatever the pinned buffer holds when it replays
        back.fill(np.nan)
        backend.launch_graph(graph, stream)
        backend.synchronize(stream)
        assert np.array_equal(back, data[::-1])
    finally:
        backend.free(device)
        backend.free_pinned(source)
        backend.free_pinned(back)


def _copy_engine(backend, buffers, batch):
    """What the engine's enqueue would be: one device-to-device copy of the input batch onto the output, on
    the buffers' stream (TensorRT cannot run here; this drives io_buffers exactly as TensorRTRunner does)."""
    nbytes = batch * int(np.prod(buffers.tensors[0].shape[1:])) * 4

    def enqueue():
        kind = backend.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        error = backend.rt.cudaMemcpyAsync(buffers.device["boxes"], buffers.device["input"], nbytes, kind,
                                           buffers.stream)[0]
        assert error == backend.rt.cudaError_t.cudaSuccess, error

    return enqueue


@pytest.mark.parametrize("use_cuda_graph", [False, True], ids=["plain", "cuda_graph"])
def test_engine_buffers_copy_in_run_and_copy_out(use_cuda_graph):
    """TensorRTRunner's buffers, copies and CUDA graph (io_buffers.EngineBuffers) up to the TensorRT calls:
    a dynamic-batch input and output, batches that grow and shrink, a graph replayed on new input."""
    backend = cuda_memory.CudaPython()
    tensors = [IOTensor("input", True, np.float32, (-1, 4, 6, 3)), IOTensor("boxes", False, np.float32, (-1, 72))]
    bound = {}
    buffers = io_buffers.EngineBuffers(backend, tensors, bound.__setitem__, use_cuda_graph)
    rng = np.random.default_rng(5)
    try:
        graphs = []
        for batch in (4, 4, 2, 3, 3):
            buffers.allocate(batch)
            assert bound == buffers.device and buffers.allocated_batch == 4  # bound once; never shrunk
            data = rng.uniform(0, 255, (batch, 4, 6, 3)).astype(np.float32)
            buffers.copy_in("input", data)
            out = buffers.run(batch, _copy_engine(backend, buffers, batch), {"boxes": (batch, 72)})
            assert np.array_equal(out["boxes"], data.reshape(batch, 72))  # fresh input every run, graph or not
            assert buffers.last_gpu_ms is not None and buffers.last_gpu_ms >= 0
            graphs.append(buffers._graph)
        if use_cuda_graph:  # captured per batch size, replayed while it stays
            assert graphs[0] is graphs[1] and graphs[1] is not graphs[2] and graphs[3] is graphs[4]
        else:
            assert graphs == [None] * 5
        before = dict(bound)
        buffers.allocate(8)  # grows: new buffers, bound again, the old graph (old addresses) dropped
        assert bound == buffers.device and bound.keys() == before.keys() and buffers._graph is None
        ones = np.ones((8, 4, 6, 3), np.float32)
        buffers.copy_in("input", ones)
        buffers.zero_rows("input", 3, 8)  # device_input's zeroing of the rows no image was written to
        out = buffers.run(8, _copy_engine(backend, buffers, 8), {"boxes": (8, 72)})
        assert np.all(out["boxes"][:3] == 1) and np.all(out["boxes"][3:] == 0)
    finally:
        buffers.close()


def _gpu_letterbox(cuda, pixels, shape, layout, dtype, pad, method):
    """The kernels on `pixels` (uint8 [h, w, 3] uploaded as they are) into a poisoned [1, ...] batch slot."""
    backend, stream = cuda
    height, width = shape
    slot = (1, height, width, 3) if layout == "NHWC" else (1, 3, height, width)
    host_in = backend.pinned_empty(pixels.shape, np.uint8)
    host_out = backend.pinned_empty(slot, dtype)
    source, target = backend.malloc(pixels.nbytes), backend.malloc(host_out.nbytes)
    resizer = None
    try:
        host_in[...] = pixels
        host_out[...] = 77  # poison: every value must be written
        backend.copy_to_device(source, host_in, stream)
        backend.copy_to_device(target, host_out, stream)
        fitted = {"automl": automl_fitted_size, "tfod": tfod_fitted_size, "nvidia": fitted_size}[method]
        new_w, new_h = fitted(pixels.shape[1], pixels.shape[0], height, width)
        image = (source, pixels.shape[:2], pixels.shape[1] * 3)
        letterbox = gpu_preprocess.compiled_letterbox()
        if method == "nvidia":  # Pillow's passes first, as GpuImageBatcher does
            resizer = gpu_preprocess.PillowResize(backend, stream, letterbox)
            image = resizer([image], [(new_h, new_w)])[0]
        letterbox.launch(*image, target, shape, (new_h, new_w), pad, layout, dtype, backend.stream_handle(stream),
                         half_pixel=method != "tfod")
        backend.copy_to_host(host_out, target, stream)
        backend.synchronize(stream)
        return np.array(host_out[0])
    finally:
        if resizer is not None:
            resizer.close()
        backend.free(source)
        backend.free(target)
        backend.free_pinned(host_in)
        backend.free_pinned(host_out)


# (image width, height) -> model (H, W): 1x1, landscape and portrait, smaller and larger than the model.
SIZES = [((1, 1), (512, 512)), ((1000, 600), (512, 512)), ((4000, 3000), (512, 512)), ((600, 1000), (512, 512)),
         ((200, 150), (512, 512)), ((1000, 600), (384, 640)), ((333, 777), (320, 320))]


@pytest.mark.parametrize("method", ["automl", "tfod", "nvidia"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("size,model", SIZES)
def test_the_letterbox_kernel_equals_the_cpu_batch(cuda, size, model, dtype, layout, method):
    image = make_image(size[0], size[1], seed=size[0] + size[1])[0]
    preprocessing = Preprocessing.for_model(method, (123.675, 116.28, 103.53))
    slot = (model[0], model[1], 3) if layout == "NHWC" else (3, model[0], model[1])
    expected = np.empty(slot, dtype)
    fit_into(image, image.size, expected, layout, preprocessing)
    pad = np.rint(preprocessing.pad) if np.dtype(dtype) == np.uint8 else preprocessing.pad
    ours = _gpu_letterbox(cuda, np.asarray(image), model, layout, dtype, tuple(float(v) for v in pad), method)
    delta = np.abs(ours.astype(np.float64) - expected.astype(np.float64)).max()
    print(f"{method} {size} -> {model} {np.dtype(dtype).name} {layout}: max |delta| {delta}")
    assert delta <= 1e-3
    assert np.array_equal(ours, expected)  # the same float32 steps (nvidia: Pillow's integer passes): bit for bit


def _write_jpegs(folder, sizes):
    folder.mkdir()
    for index, (width, height) in enumerate(sizes):
        make_image(width, height, seed=200 + index, num_shapes=6)[0].save(folder / f"img_{index:02d}.jpg", quality=90)
    rotated = make_image(640, 400, seed=300)[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    rotated.save(folder / "rotated.jpg", quality=90, exif=exif)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


@pytest.mark.skipif(_nvimgcodec_reason() is not None, reason=f"GPU decoding unavailable: {_nvimgcodec_reason()}")
@pytest.mark.parametrize("dtype,layout,method", [(np.float32, "NHWC", "automl"), (np.uint8, "NCHW", "automl"),
                                                 (np.float32, "NCHW", "nvidia"), (np.uint8, "NHWC", "nvidia")])
def test_gpu_batches_match_the_cpu_batcher_up_to_the_jpeg_decoder(cuda, tmp_path, dtype, layout, method):
    """nvImageCodec's batches: the CPU batcher's sizes, scales and skips, EXIF applied; pixels differ only by
    the JPEG decoders (nvJPEG vs Pillow's libjpeg)."""
    backend, stream = cuda
    folder = _write_jpegs(tmp_path / "images", [(1000, 600), (600, 1000), (1920, 1080), (300, 200), (1, 1)])
    shape, batch_size = (512, 512), 4
    preprocessing = Preprocessing.for_model(method)
    cpu = ImageBatcher(str(folder), shape, layout, batch_size, dtype, preprocessing=preprocessing)
    slot = int(np.prod(shape)) * 3 * np.dtype(dtype).itemsize
    buffer = backend.malloc(slot * batch_size)
    host = backend.pinned_empty((batch_size, *((shape[0], shape[1], 3) if layout == "NHWC" else (3, *shape))), dtype)
    gpu = gpu_preprocess.GpuImageBatcher(str(folder), shape, layout, batch_size, dtype, backend, stream,
                                         lambda count: buffer, preprocessing=preprocessing)
    try:
        deltas = []
        cpu_batches = list(cpu)
        for (count, infos), (cpu_batch, cpu_infos) in zip(gpu, cpu_batches):
            backend.copy_to_host(host, buffer, stream)
            backend.synchronize(stream)
            assert [(i.path, i.width, i.height, i.scale_x, i.scale_y) for i in infos] == \
                   [(i.path, i.width, i.height, i.scale_x, i.scale_y) for i in cpu_infos]
            deltas.append(np.abs(host[:count].astype(np.float64) - cpu_batch[:count].astype(np.float64)))
        assert len(cpu_batches) == len(gpu) and sorted(gpu.skipped) == sorted(cpu.skipped)
        assert [p.endswith("broken.jpg") for p in gpu.skipped] == [True]
        every = np.concatenate([d.ravel() for d in deltas])
        print(f"GPU decode vs Pillow ({method}, {np.dtype(dtype).name}): mean |delta| {every.mean():.4f}, "
              f"max {every.max():.2f}")
        assert every.mean() < 1.0 and every.max() <= 64  # JPEG decoders differ; a wrong resize differs by far more
        rotated = [i for batch in cpu_batches for i in batch[1] if i.path.endswith("rotated.jpg")][0]
        assert (rotated.width, rotated.height) == (400, 640)
    finally:
        gpu.close()
        backend.free(buffer)
        backend.free_pinned(host)


@pytest.mark.skipif(_nvimgcodec_reason() is not None, reason=f"GPU decoding unavailable: {_nvimgcodec_reason()}")
def test_nvimgcodec_decodes_as_pillow_does_within_one_level_on_average(tmp_path):
    from nvidia import nvimgcodec  # pyright: ignore[reportMissingImports]

    folder = _write_jpegs(tmp_path / "images", [(1920, 1080), (640, 480)])
    decoder = nvimgcodec.Decoder()
    params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.I_RGB)
    for path in sorted(folder.glob("img_*.jpg")) + [folder / "rotated.jpg"]:
        ours = np.asarray(decoder.decode(nvimgcodec.CodeStream(path.read_bytes()), params=params).cpu())
        theirs = np.asarray(load_rgb(str(path))[0])
        assert ours.shape == theirs.shape
        delta = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
        print(f"{path.name}: mean |delta| {delta.mean():.4f}, max {delta.max()}")
        assert delta.mean() < 1.0
