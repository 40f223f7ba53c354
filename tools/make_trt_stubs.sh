#!/usr/bin/env bash
# Type stubs for the static check of the TensorRT-facing code (see README "Static checks").
#   .cache/typecheck/trt10/tensorrt : the tensorrt-stubs package (TensorRT 10.13 API)
#   .cache/typecheck/trt11/tensorrt : stubgen over the TensorRT 11.x lean runtime bindings,
#                                     plus init_libnvinfer_plugins, which full TensorRT has and lean lacks
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=.cache/typecheck
rm -rf "$OUT" && mkdir -p "$OUT/trt10" "$OUT/trt11/tensorrt" "$OUT/lean"
"$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$OUT/pkg10" tensorrt-stubs
cp -r "$OUT/pkg10/tensorrt" "$OUT/pkg10/tensorrt_bindings" "$OUT/trt10/"
"$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$OUT/lean" tensorrt-lean-cu13-bindings==11.4.0.106 tensorrt-lean-cu13-libs==11.4.0.106
PYTHONPATH="$OUT/lean" "$(dirname "$PY")/stubgen" -p tensorrt_lean_bindings -o "$OUT/gen" > /dev/null
# the package (nptype, __version__, ...) re-exports the compiled module's classes
cp "$OUT/gen/tensorrt_lean_bindings/__init__.pyi" "$OUT/gen/tensorrt_lean_bindings/tensorrt_lean.pyi" "$OUT/trt11/tensorrt/"
cat >> "$OUT/trt11/tensorrt/tensorrt_lean.pyi" <<'PYI'

# Full TensorRT 11.x (not the lean runtime) also has the plugin library entry point.
def init_libnvinfer_plugins(logger: ILogger | None, namespace: str) -> bool: ...
PYI
echo "stubs ready in $OUT"
