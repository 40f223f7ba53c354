"""The runner a script's --engine or --onnx names: one of the two, checked before anything loads."""

from efficientdet_trt.core.common import UserError


def check_model_arguments(engine, onnx):
    """Exactly one of --engine and --onnx."""
    if bool(engine) == bool(onnx):
        raise UserError("give the model with exactly one of --engine (TensorRT) or --onnx (CPU)")


def open_runner(engine, onnx, cuda_graph=False, verbose=False, layout_optimizations=True):
    """The runner for `engine` (TensorRT) or `onnx` (ONNX Runtime, CPU), not yet activated;
    layout_optimizations: see onnx_runner.cpu_session_options."""
    check_model_arguments(engine, onnx)
    if engine:
        from efficientdet_trt.engine.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(engine, use_cuda_graph=cuda_graph, verbose=verbose)
    from efficientdet_trt.run.onnx_runner import OnnxCpuRunner

    return OnnxCpuRunner(onnx, layout_optimizations=layout_optimizations)
