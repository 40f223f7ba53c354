"""Stage 1: a TensorFlow SavedModel (AutoML or TFOD family) to tf2onnx's graph, then graph surgery
into the TensorRT-ready ONNX (pipeline.py), checked by self_check.py before it is kept.
"""
