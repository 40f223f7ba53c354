"""INT8 calibration arithmetic shared by every TensorRT version: entropy thresholds and the cache file.

- `entropy_threshold`: TensorRT's entropy calibration (NVIDIA, "8-bit Inference
  with TensorRT", GTC 2017): a 2048-bin histogram of |x|; for each candidate
  clipping bin i >= 128, the reference distribution P (bins below i, with the
  clipped tail added to its last bin) is compared with Q, P quantized to 128
  levels and expanded back over P's non-empty bins; the i with the smallest
  KL(P || Q) gives the threshold (i + 0.5) * bin width. Bin 0 counts as bin 1,
  as in NVIDIA's pytorch-quantization, so ReLU zeros do not pull it down.
- `HistogramCollector`: histograms of many tensors over many batches, in one
  pass (ranges widen by exact power-of-two bin merges).
- `HistogramCollector.scales("minmax")`: max |x| as the threshold instead (what
  TensorRT's IInt8MinMaxCalibrator does): no clipping.
- The calibration cache is TensorRT's own text format: a header line
  `TRT-<version>-EntropyCalibration2` (or `-MinMaxCalibration`), then
  `<tensor name>: <8 hex digits>`, the big-endian IEEE-754 bits of the float32
  scale (threshold / 127). A cache written here is read by a TensorRT 8.6/10
  calibrator of the same method and the other way round.
"""

import struct

import numpy as np

from efficientdet_trt.core.common import UserError, atomic_output

NUM_BINS = 2048
NUM_QUANTIZED_BINS = 128
# TensorRT's cache headers: TRT-<version>-<calibrator>, per calibration method.
CACHE_KINDS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


def entropy_threshold(histogram, bin_width, num_quantized_bins=NUM_QUANTIZED_BINS):
    """The clipping threshold minimising KL divergence, for a histogram of |x| starting at 0."""
    histogram = np.array(histogram, dtype=np.float64)
    total_bins = len(histogram)
    # The zeros of a ReLU output (often half the tensor) sit in bin 0 and would
    # dominate the divergence, favouring far too low a threshold; like NVIDIA's
    # pytorch-quantization, weigh bin 0 as its neighbour.
    histogram[0] = histogram[1]
    if histogram.sum() == 0:
        return bin_width * total_bins
    tails = np.concatenate([np.cumsum(histogram[::-1])[::-1], [0.0]])  # tails[i] = sum(histogram[i:])
    best_i, best_kl = total_bins, np.inf
    for i in range(num_quantized_bins, total_bins + 1):
        reference = histogram[:i].copy()
        reference[i - 1] += tails[i]
        nonzero = reference != 0
        # Merge the i bins into num_quantized_bins levels (each at least one bin wide),
        # then spread each level evenly over the non-empty bins it came from.
        edges = np.linspace(0, i, num_quantized_bins + 1).astype(np.int64)
        sums = np.add.reduceat(histogram[:i], edges[:-1])
        counts = np.add.reduceat(nonzero.astype(np.int64), edges[:-1])
        levels = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        candidate = np.repeat(levels, np.diff(edges)) * nonzero
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
    """Per-tensor |x| histograms over batches, in one pass: observe(...) each batch, then scales().

    A tensor's range starts at its first batch's max |x| and doubles whenever a
    later batch exceeds it; doubling merges bin pairs exactly, so the result is
    the histogram a first max-finding pass would have given over the final range.
    """

    def __init__(self, num_bins=NUM_BINS):
        if num_bins % 2:
            raise ValueError("num_bins must be even")
        self.num_bins = num_bins
        self.max = {}
        self.range = {}
        self.histograms = {}

    def observe(self, tensors):
        for name, values in tensors.items():
            magnitudes = np.abs(np.asarray(values, dtype=np.float32)).ravel()
            peak = float(magnitudes.max()) if magnitudes.size else 0.0
            self.max[name] = max(self.max.get(name, 0.0), peak)
            if name not in self.range:
                self.range[name] = peak if peak > 0 else 1.0
                self.histograms[name] = np.zeros(self.num_bins, np.int64)
            while peak > self.range[name]:
                merged = self.histograms[name].reshape(-1, 2).sum(axis=1)
                self.histograms[name] = np.concatenate([merged, np.zeros_like(merged)])
                self.range[name] *= 2
            counts, _ = np.histogram(magnitudes, bins=self.num_bins, range=(0.0, self.range[name]))
            self.histograms[name] += counts

    def scales(self, method="entropy"):
        """name -> INT8 scale: threshold / 127, the threshold by `method` (entropy, or minmax: max |x|)."""
        if method == "minmax":
            return {name: (self.max[name] or self.range[name]) / 127.0 for name in self.histograms}
        return {name: entropy_threshold(histogram, self.range[name] / self.num_bins) / 127.0
                for name, histogram in self.histograms.items()}


def float_to_hex(value):
    return struct.pack(">f", float(value)).hex()


def hex_to_float(text):
    return struct.unpack(">f", bytes.fromhex(text))[0]


def format_cache(scales, version="8601", method="entropy"):
    lines = [f"TRT-{version}-{CACHE_KINDS[method]}"]
    lines += [f"{name}: {float_to_hex(scale)}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_cache(path, scales, version="8601", method="entropy"):
    with atomic_output(path, "w") as handle:
        handle.write(format_cache(scales, version, method))


def read_cache(path, method=None):
    """name -> scale from a TensorRT calibration cache; one-line errors for anything else.

    With `method`, a cache made by the other calibration method is an error too.
    """
    try:
        with open(path, encoding="ascii") as handle:
            lines = [line.rstrip("\n") for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a readable calibration cache ({type(error).__name__}); give --calib_cache a "
                        "new file name to calibrate into") from None
    kinds = {kind: name for name, kind in CACHE_KINDS.items()}
    header = lines[0].split("-") if lines else []
    if len(header) != 3 or header[0] != "TRT" or header[2] not in kinds:
        raise UserError(f"{path}: not a TensorRT entropy or min-max calibration cache (first line {lines[:1]}); "
                        "give --calib_cache a new file name to calibrate into")
    if method and kinds[header[2]] != method:
        raise UserError(f"{path}: made by {kinds[header[2]]} calibration, not {method}; pass --calib_method "
                        f"{kinds[header[2]]} or delete it to recalibrate")
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
