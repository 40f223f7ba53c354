"""Stage 5: COCO mAP (coco.py) and the layer-by-layer comparison with TensorFlow.
"""
