#!/usr/bin/env python3
"""Time create_onnx.py on the d0 test fixture and describe the graph it writes.

Prints the wall time of the command-line run (process start to file written),
the time per stage in-process, the final node count and the op histogram.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--fixture", default="d0_hard", help="test fixture name (see tests/conftest.py MODELS)")
    parser.add_argument("--saved_model", help="time this SavedModel instead of a fixture")
    args = parser.parse_args()

    import onnx

    from conftest import saved_model_path

    path = args.saved_model or saved_model_path(args.fixture)
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "model.onnx")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, os.path.join(ROOT, "create_onnx.py"), "--saved_model", path,
                                 "--onnx", output], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(result.stderr)
        model = onnx.load(output)
        size_mb = os.path.getsize(output) / 1e6

    import create_onnx

    start = time.perf_counter()
    converted = create_onnx.convert_saved_model(path)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    create_onnx.build_graph(converted)
    surgery_s = time.perf_counter() - start

    histogram = collections.Counter(node.op_type for node in model.graph.node)
    print(f"\nSavedModel: {path}")
    print(f"create_onnx.py wall time: {wall:.1f} s  (in-process: load + tf2onnx {convert_s:.1f} s, "
          f"graph surgery {surgery_s:.1f} s)")
    print(f"ONNX: {len(model.graph.node)} nodes (tf2onnx gave {len(converted.model.graph.node)}), {size_mb:.1f} MB")
    print("op histogram:")
    for op, count in histogram.most_common():
        print(f"  {op:24s} {count}")


if __name__ == "__main__":
    main()
