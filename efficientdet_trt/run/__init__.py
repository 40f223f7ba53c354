"""Stage 4: running a detector behind one small interface (runner.py): ONNX Runtime on the CPU with the
NMS plugins in NumPy, TensorFlow itself; detections and their files.
"""
