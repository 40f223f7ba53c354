"""Stage 2: reduced precision written into the ONNX on the CPU: FP16 (fp16.py), INT8 Q/DQ and its
calibration (quantize.py), TensorRT's calibration-cache format and entropy thresholds.
"""
