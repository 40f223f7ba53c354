"""Stage 6: Triton Inference Server model configurations for engines and ONNX graphs.
"""
