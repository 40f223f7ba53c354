"""INT8 calibration arithmetic shared by every TensorRT version: entropy thresholds and the cache file.

- `entropy_threshold`: TensorRT's entropy calibration (NVIDIA, "8-bit Inference
  with TensorRT", GTC 2017): a 2048-bin histogram of |x|; for each candidate
  clipping bin i >= 128, the reference distribution P (bins below i, with the
  clipped tail added to its last bin) is compared with Q, P quantized to 128
  levels and expanded back over P's non-empty bins; the i with the smallest
  KL(P || Q) gives the threshold (i + 0.5) * bin width.
- `HistogramCollector`: histograms of many tensors over many batches (a first
  pass finds each tensor's max |x|, a second fills fixed-range histograms).
- The calibration cache is TensorRT's own text format: a header line
  `TRT-<version>-EntropyCalibration2`, then `<tensor name>: <8 hex digits>`, the
  big-endian IEEE-754 bits of the float32 scale (threshold / 127). A cache written
  here is read by a TensorRT 8.6/10 calibrator and the other way round.
"""

import struct

import numpy as np

from common import UserError, atomic_output

NUM_BINS = 2048
NUM_QUANTIZED_BINS = 128
CACHE_HEADER = "TRT-{version}-EntropyCalibration2"


def entropy_threshold(histogram, bin_width, num_quantized_bins=NUM_QUANTIZED_BINS):
    """The clipping threshold minimising KL divergence, for a histogram of |x| starting at 0."""
    histogram = np.asarray(histogram, dtype=np.float64)
    total_bins = len(histogram)
    if histogram.sum() == 0:
        return bin_width * total_bins
    best_i, best_kl = total_bins, np.inf
    for i in range(num_quantized_bins, total_bins + 1):
        reference = histogram[:i].copy()
        reference[i - 1] += histogram[i:].sum()
        nonzero = reference != 0
        # Merge the i bins into num_quantized_bins levels, then spread each level
        # evenly over the non-empty bins it came from.
        edges = np.linspace(0, i, num_quantized_bins + 1).astype(np.int64)
        candidate = np.zeros(i)
        for start, stop in zip(edges[:-1], edges[1:]):
            used = nonzero[start:stop]
            count = used.sum()
            if count:
                candidate[start:stop][used] = histogram[:i][start:stop].sum() / count
        if candidate.sum() == 0:
            continue
        p = reference / reference.sum()
        q = _smooth(candidate / candidate.sum(), p > 0)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * bin_width


def _smooth(q, needed, eps=1e-4):
    """Give bins where P has mass but Q has none a little mass, so KL(P||Q) stays finite."""
    q = np.where(needed & (q == 0), eps, q)
    return q / q.sum()


class HistogramCollector:
    """Per-tensor |x| histograms over batches: observe_max(...) on every batch, then observe(...) again."""

    def __init__(self, num_bins=NUM_BINS):
        self.num_bins = num_bins
        self.max = {}
        self.histograms = {}

    def observe_max(self, tensors):
        for name, values in tensors.items():
            peak = float(np.abs(values).max()) if values.size else 0.0
            self.max[name] = max(self.max.get(name, 0.0), peak)

    def observe(self, tensors):
        for name, values in tensors.items():
            top = self.max.get(name)
            if top is None:
                raise RuntimeError(f"observe_max was not run for {name}")
            counts, _ = np.histogram(np.abs(values), bins=self.num_bins, range=(0.0, top if top > 0 else 1.0))
            self.histograms[name] = self.histograms.get(name, 0) + counts

    def scales(self):
        """name -> INT8 scale (entropy threshold / 127)."""
        out = {}
        for name, histogram in self.histograms.items():
            top = self.max[name] if self.max[name] > 0 else 1.0
            out[name] = entropy_threshold(histogram, top / self.num_bins) / 127.0
        return out


def float_to_hex(value):
    return struct.pack(">f", float(value)).hex()


def hex_to_float(text):
    return struct.unpack(">f", bytes.fromhex(text))[0]


def format_cache(scales, version="8601"):
    lines = [CACHE_HEADER.format(version=version)]
    lines += [f"{name}: {float_to_hex(scale)}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_cache(path, scales, version="8601"):
    with atomic_output(path, "w") as handle:
        handle.write(format_cache(scales, version))


def read_cache(path):
    """name -> scale from a TensorRT entropy calibration cache; one-line errors for anything else."""
    try:
        with open(path, encoding="ascii") as handle:
            lines = [line.rstrip("\n") for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read the calibration cache ({error}); delete it to recalibrate") from None
    if not lines or not (lines[0].startswith("TRT-") and lines[0].endswith("Calibration2")):
        raise UserError(f"{path}: not a TensorRT entropy calibration cache (first line {lines[:1]}); "
                        "delete it to recalibrate")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, _, value = line.rpartition(": ")
        try:
            if not name or len(value) != 8:
                raise ValueError(line)
            scales[name] = hex_to_float(value)
        except ValueError:
            raise UserError(f"{path}: line {number} is not '<tensor>: <8 hex digits>'; the cache is corrupt, "
                            "delete it to recalibrate") from None
    return scales
