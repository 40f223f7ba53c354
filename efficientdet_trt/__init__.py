"""EfficientDet -> TensorRT: the library behind the top-level scripts, one folder per pipeline stage.

core (errors, CLI frame, files, labels), convert, precision, engine, run, evaluate, serve.
"""
