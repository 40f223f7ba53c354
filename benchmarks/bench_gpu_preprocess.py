#!/usr/bin/env python3
"""GPU decoding and letterboxing (gpu_preprocess.py) against the CPU ImageBatcher, side by side in one run.

Writes synthetic JPEGs (quality 90) of each --sizes, then batches them into the model's input (D0: 512x512,
batch 32; automl and nvidia preprocessing) both ways, float32 and uint8: the CPU batcher with every core's worker
thread, and the GPU path (nvImageCodec batch decode, the letterbox kernel into a device buffer, as an
engine's input binding would get it). Prints images/s, the ratio and the card, and how far nvImageCodec's
JPEG decode is from Pillow's on the same files. Needs a CUDA GPU and requirements-gpu.txt.
"""

import argparse
import os
import sys
import tempfile
import time
from multiprocessing import Pool

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

from synthetic_images import make_image  # noqa: E402

from efficientdet_trt.engine import (
    cuda_memory,  # noqa: E402
    gpu_preprocess,  # noqa: E402
)
from image_batcher import ImageBatcher, Preprocessing, list_images, load_rgb  # noqa: E402


def _write(job):
    path, width, height, seed = job
    make_image(width, height, seed=seed, num_shapes=6)[0].save(path, quality=90)


def write_jpegs(folder, count, width, height):
    os.makedirs(folder, exist_ok=True)
    jobs = [(os.path.join(folder, f"photo_{i:04d}.jpg"), width, height, 900 + i) for i in range(count)]
    with Pool() as pool:
        pool.map(_write, jobs)


def cpu_rate(folder, shape, batch_size, dtype, workers, method):
    batcher = ImageBatcher(folder, shape, "NHWC", batch_size, dtype, workers=workers,
                           preprocessing=Preprocessing.for_model(method))
    start = time.perf_counter()
    images = sum(len(infos) for _, infos in batcher)
    return images / (time.perf_counter() - start)


def gpu_rate(folder, shape, batch_size, dtype, cuda, stream, buffer, workers, method):
    batcher = gpu_preprocess.GpuImageBatcher(folder, shape, "NHWC", batch_size, dtype, cuda, stream,
                                             lambda count: buffer, workers=workers,
                                             preprocessing=Preprocessing.for_model(method))
    try:
        start = time.perf_counter()
        images = sum(count for count, _ in batcher)
        cuda.synchronize(stream)
        return images / (time.perf_counter() - start)
    finally:
        batcher.close()


def decoder_difference(folder, count):
    """mean and max |nvImageCodec - Pillow| per value over the first `count` files."""
    from nvidia import nvimgcodec  # pyright: ignore[reportMissingImports]

    decoder = nvimgcodec.Decoder()
    params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.I_RGB)
    total = peak = values = 0
    for path in list_images(folder)[:count]:
        with open(path, "rb") as handle:
            ours = np.asarray(decoder.decode(nvimgcodec.CodeStream(handle.read()), params=params).cpu())
        delta = np.abs(ours.astype(np.int16) - np.asarray(load_rgb(path)[0]).astype(np.int16))
        total, peak, values = total + int(delta.sum()), max(peak, int(delta.max())), values + delta.size
    return total / values, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--count", type=int, default=512, help="JPEGs per size")
    parser.add_argument("--sizes", default="1920x1080,640x480", help="photo sizes WxH, comma-separated")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--model", default="512x512", help="model input WxH")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes per path (the best is shown)")
    parser.add_argument("--methods", default="automl,nvidia", help="preprocessing methods, comma-separated")
    args = parser.parse_args()
    reason = gpu_preprocess.unavailable_reason()
    if reason:
        sys.exit(f"bench_gpu_preprocess: {reason}")
    width, height = (int(v) for v in args.model.split("x"))
    shape = (height, width)
    workers = os.cpu_count() or 1
    cuda = cuda_memory.CudaPython()
    stream = cuda.create_stream()
    buffer = cuda.malloc(args.batch_size * height * width * 3 * 4)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes.split(","):
            photo_w, photo_h = (int(v) for v in size.split("x"))
            folder = os.path.join(work, size)
            write_jpegs(folder, args.count, photo_w, photo_h)
            mean, peak = decoder_difference(folder, 32)
            for method in args.methods.split(","):
                gpu_rate(folder, shape, args.batch_size, np.float32, cuda, stream, buffer, workers, method)  # warm-up
                for dtype in (np.float32, np.uint8):
                    cpu = max(cpu_rate(folder, shape, args.batch_size, dtype, workers, method)
                              for _ in range(args.repeat))
                    gpu = max(gpu_rate(folder, shape, args.batch_size, dtype, cuda, stream, buffer, workers, method)
                              for _ in range(args.repeat))
                    rows.append((size, method, np.dtype(dtype).name, cpu, gpu, mean, peak))
    cuda.free(buffer)
    print(f"\n{cuda.device_name()}, {workers} CPU cores; {args.count} JPEGs (quality 90) per size -> "
          f"{width}x{height} NHWC, batch {args.batch_size}; best of {args.repeat}")
    print(f"{'photos':>10} {'method':>7} {'dtype':>8} {'CPU batcher':>14} {'GPU path':>12} {'GPU/CPU':>8}   "
          "decode vs Pillow")
    for size, method, dtype, cpu, gpu, mean, peak in rows:
        print(f"{size:>10} {method:>7} {dtype:>8} {cpu:>10.1f} im/s {gpu:>8.1f} im/s {gpu / cpu:>7.1f}x   "
              f"mean |d| {mean:.4f}, max {peak}")


if __name__ == "__main__":
    main()
