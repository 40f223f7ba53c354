"""The contract between create_onnx.py and the other scripts: the ONNX metadata keys they share and the
names of the two graph families (image_batcher's `automl`/`tfod` name preprocessing methods instead)."""

FAMILY_KEY = "efficientdet_family"  # which family's graph this is, one of FAMILIES
AUTOML_FAMILY = "automl"  # Google AutoML's EfficientDet (automl_graph.py)
TFOD_FAMILY = "tfod"  # a TF2 Object Detection API EfficientDet (tfod_graph.py)
FAMILIES = (AUTOML_FAMILY, TFOD_FAMILY)
