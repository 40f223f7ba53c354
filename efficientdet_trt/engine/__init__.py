"""Stage 3: TensorRT, version by version (trt_adapter.py), the builder, CUDA memory, the engine runner
and GPU preprocessing straight into its input.
"""
