"""Azure ML entry script for the scoring benchmark: the same ONNX file edgeship serves, run
by onnxruntime inside Azure ML's own inference server (azureml-inference-server-http).

The body is Azure ML's `{"data": ...}`. For the fixtures (one input of rows, [N, features])
`data` is the rows as they are; for an image model (one 4-dimensional input, [N, C, H, W], the
benchmark's CNNs) `data` is one or more images, nested or flat, reshaped to the input's C, H, W.
"""
import json
import os

import numpy as np
import onnxruntime as ort

session = None


def init():
    global session
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.onnx")
    options = ort.SessionOptions()
    # One thread per worker: WORKER_COUNT workers share the machine's cores.
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(raw_data):
    spec = session.get_inputs()[0]
    rows = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    if len(spec.shape) == 4:
        # The batch axis may be a name (N) or fixed; the others are fixed for an image model.
        rows = rows.reshape((-1, *spec.shape[1:]))
    outputs = [o.tolist() if hasattr(o, "tolist") else o for o in session.run(None, {spec.name: rows})]
    # One output as is, several as a list: the shape edgeship's /score answers in.
    return outputs[0] if len(outputs) == 1 else outputs
