# Everything runs in a local virtualenv (.venv) made from requirements*.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TFOD_PACKAGES := tf-models-research-object-detection==2.8.0.post1 tf-models-official==2.15.0 tf-slim==1.1.0 \
	tensorflow-io==0.36.0 scipy==1.13.1
DEMO ?= demo_output
DEMO_MODEL ?= efficientdet-d0
DEMO_SIZE ?= 256
DEMO_STEPS ?= 400

.PHONY: install test typecheck pytest demo benchmark clean

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	# AutoML's EfficientDet code (test fixtures, demo model): its declared deps do not install on 3.11
	$(PY) -m pip install -q --no-deps tflite-model-maker==0.4.3
	# The TF2 Object Detection API (TFOD test fixtures): its declared deps would replace TensorFlow
	$(PY) -m pip install -q --no-deps $(TFOD_PACKAGES)
	touch $@

install: $(VENV)/.installed

test: typecheck pytest

pytest: install
	$(PY) -m pytest -q -p no:cacheprovider --fixtures-ahead tests

# Static check of the TensorRT-facing code against TensorRT 10.x stubs and 11.x runtime stubs.
typecheck: install
	PY=$(PY) tools/make_trt_stubs.sh
	$(VENV)/bin/pyright -p pyrightconfig.json
	$(VENV)/bin/pyright -p pyrightconfig.trt11.json

# End to end on the CPU: a real EfficientDet SavedModel (AutoML's code, trained for a few minutes on
# synthetic shapes; DEMO_SIZE=128 DEMO_STEPS=1600 is the tests' model, sharing their cached weights)
# -> ONNX -> detections on new images like those it was trained on (minutes of training generalise
# to little else).
# One folder per model setting: another DEMO_SIZE or DEMO_STEPS trains its own model, never reuses another's.
DEMO_RUN = $(DEMO)/$(DEMO_MODEL)-$(DEMO_SIZE)-$(DEMO_STEPS)steps

demo: install
	test -f $(DEMO_RUN)/saved_model/saved_model.pb || $(PY) tests/fixtures/make_automl_savedmodel.py \
		--model_name $(DEMO_MODEL) --image_size $(DEMO_SIZE) --train_steps $(DEMO_STEPS) \
		--weights_cache .cache/fixtures/weights --output $(DEMO_RUN)/saved_model
	$(PY) create_onnx.py --saved_model $(DEMO_RUN)/saved_model --onnx $(DEMO_RUN)/model.onnx
	test -d $(DEMO_RUN)/images || $(PY) tests/fixtures/synthetic_images.py --output $(DEMO_RUN)/images --count 6 \
		--width $(DEMO_SIZE) --height $(DEMO_SIZE) --seed 500
	$(PY) infer.py --onnx $(DEMO_RUN)/model.onnx --input $(DEMO_RUN)/images --output $(DEMO_RUN)/results \
		--labels tests/fixtures/shapes_labels.txt
	@echo "visualizations and results: $(DEMO_RUN)/results"

benchmark: install
	$(PY) benchmarks/bench_create_onnx.py
	$(PY) benchmarks/bench_image_batcher.py
	$(PY) benchmarks/bench_nms.py
	$(PY) benchmarks/bench_cpu_inference.py
	$(PY) benchmarks/bench_coco_eval.py
	$(PY) benchmarks/bench_calibration.py

clean:
	rm -rf $(DEMO) .cache
