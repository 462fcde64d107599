#!/usr/bin/env python3
"""Real CNN graphs for the scoring benchmark, from the `onnx` wheel (no download but the wheel).

The `onnx` Python package ships the "light" versions of the ONNX model zoo's classic image
classifiers under `onnx/backend/test/data/light/`: the full graphs (every convolution, every
operator, the same FLOPs), with each weight tensor made by a `ConstantOfShape` node instead
of stored, so the files are small. The weights being constants, every answer is the uniform
softmax (0.001 per class); no operation is cheaper for it. Two of them are written here:

    squeezenet/   light_squeezenet.onnx  input data_0        [N, 3, 224, 224] -> [N, 1000, 1, 1]
    resnet50/     light_resnet50.onnx    input gpu_0/data_0  [N, 3, 224, 224] -> [N, 1000]

each folder holding

    model.onnx          the graph (see "batch axis" below)
    sample_input.json   {"data": [...]}: one image, [1, 3, 224, 224], nested lists
    sample_input.bin    the same tensor as raw little-endian float32 (602,112 bytes), the body
                        of an `application/octet-stream` request to edgeship's /score

The image is deterministic pseudo-random pixel levels k/256 (k = 0..255, seeded), values in
[0, 1): the JSON text and the float32 bytes hold exactly the same numbers.

Batch axis: the wheel's graphs have a fixed batch of 1. By default the first axis of the input
and output is opened (`N`), and resnet50's one `Reshape` to [1, 2048] becomes [-1, 2048], so
that edgeship's dynamic batching (an open first axis on every input and output) applies; the
arithmetic per image is unchanged. `--fixed-batch` writes the graphs as shipped.

Each model is checked with onnx's checker and run once in onnxruntime (one intra-op thread,
as the benchmark's Python servers run it) on the sample, and at batch 2 where the axis is open;
the time of one run is printed.

    python3 -m venv /tmp/onnxv && /tmp/onnxv/bin/pip install onnx numpy onnxruntime
    /tmp/onnxv/bin/python scripts/bench/cnn_fixtures.py [--out target/bench-fixtures]
        [--models squeezenet,resnet50] [--fixed-batch]

onnxruntime is optional: without it the check is skipped (with a warning).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = {"squeezenet": "light_squeezenet.onnx", "resnet50": "light_resnet50.onnx"}
SEED = 20261126


def light_dir():
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def initializers(graph):
    return {t.name: t for t in graph.initializer}


def real_inputs(graph):
    """Graph inputs that are not weights (IR 3 graphs list initializers as inputs too)."""
    weights = initializers(graph)
    return [i for i in graph.input if i.name not in weights]


def dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def open_batch_axis(model):
    """Makes the first axis of every input and output symbolic (`N`) and lets a constant
    `Reshape` to [1, ...] follow the batch ([-1, ...])."""
    graph = model.graph
    for value in [*real_inputs(graph), *graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_param = "N"
    weights = initializers(graph)
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in weights:
            continue
        shape = numpy_helper.to_array(weights[node.input[1]])
        if shape.ndim == 1 and len(shape) > 1 and shape[0] == 1 and -1 not in shape[1:]:
            opened = shape.copy()
            opened[0] = -1
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(opened, node.input[1]))
    # Intermediate shapes recorded for batch 1 would now be wrong.
    del graph.value_info[:]
    return model


def sample_image(shape):
    rng = np.random.default_rng(SEED)
    return (rng.integers(0, 256, size=shape) / 256.0).astype(np.float32)


def check(path, name, image, batch_open):
    try:
        import onnxruntime as ort
    except ImportError:
        print(f"  {name}: onnxruntime is not installed here: not run", file=sys.stderr)
        return
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the IR 3 graphs' unused initializers warn otherwise
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    session.run(None, {feed: image})  # warm-up: allocations, plan
    start = time.perf_counter()
    outputs = session.run(None, {feed: image})
    elapsed = time.perf_counter() - start
    print(f"  onnxruntime (1 thread): one run {elapsed * 1000:.1f} ms, outputs "
          f"{[list(o.shape) for o in outputs]}, sum {float(outputs[0].sum()):.4f}")
    if not np.all(np.isfinite(outputs[0])):
        raise SystemExit(f"{name}: onnxruntime's output is not finite")
    if batch_open:
        second = np.flip(image, axis=3).copy()
        pair = session.run(None, {feed: np.concatenate([image, second])})[0]
        alone = session.run(None, {feed: second})[0]
        if not (np.allclose(pair[:1], outputs[0], atol=1e-5) and np.allclose(pair[1:], alone, atol=1e-5)):
            raise SystemExit(f"{name}: a batch of 2 does not give each image its own answer")
        print("  batch of 2: each image gets its answer alone")


def write(name, out, fixed_batch):
    source = os.path.join(light_dir(), MODELS[name])
    model = onnx.load(source)
    if not fixed_batch:
        open_batch_axis(model)
    onnx.checker.check_model(model)
    inputs = real_inputs(model.graph)
    if len(inputs) != 1:
        raise SystemExit(f"{name}: expected one input, found {[i.name for i in inputs]}")
    spec = inputs[0]
    if spec.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise SystemExit(f"{name}: input {spec.name} is not float32")
    shape = [1 if not isinstance(d, int) or d == 0 else d for d in dims(spec)]
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path)
    image = sample_image(shape)
    with open(os.path.join(folder, "sample_input.json"), "w") as f:
        json.dump({"data": image.tolist()}, f, separators=(",", ":"))
    image.astype("<f4").tofile(os.path.join(folder, "sample_input.bin"))
    outputs = ", ".join(f"{o.name} {dims(o)}" for o in model.graph.output)
    print(f"{name}: {os.path.relpath(path, ROOT)} ({os.path.getsize(path):,} bytes, from {MODELS[name]}), "
          f"input {spec.name} {dims(spec)} float32, output {outputs}; sample {shape}")
    check(path, name, image, not fixed_batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "bench-fixtures"),
                        help="folder to write NAME/model.onnx and the samples into")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--fixed-batch", action="store_true",
                        help="keep the wheel's fixed batch of 1 (no edgeship batching then)")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}: choose from {list(MODELS)}")
    print(f"onnx {onnx.__version__}, graphs from {light_dir()}")
    for name in names:
        write(name, args.out, args.fixed_batch)


if __name__ == "__main__":
    main()
