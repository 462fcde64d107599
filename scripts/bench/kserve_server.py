#!/usr/bin/env python3
"""KServe's Python model server running one ONNX file in onnxruntime, for the scoring benchmark.

A `kserve.Model` whose `predict` feeds the Open Inference Protocol v2 request's tensors to an
onnxruntime session (CPU, one intra-op thread per worker process, as `aml_entry.py` runs Azure
ML's workers) and answers every output as a JSON tensor. Served by `kserve.ModelServer` over
REST only (`/v2/models/NAME/infer`, also `/v2/models/NAME/ready`); gRPC is off. KServe's own
defaults otherwise (its request logging included), as a KServe custom predictor runs.

    KSERVE_PYTHON -m pip install kserve onnxruntime numpy
    KSERVE_PYTHON scripts/bench/kserve_server.py --model-dir DIR --name NAME --http_port 8080 --workers 2

`DIR/model.onnx` is the model. With `--workers` above 1, KServe starts that many uvicorn
processes (spawned: each unpickles the model and opens its own session) on one socket.
Tested with kserve 0.21.
"""

import argparse
import importlib.metadata
import os
import sys

import numpy as np
import onnxruntime as ort

import kserve
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.utils.utils import from_np_dtype, generate_uuid


class OnnxModel(kserve.Model):
    def __init__(self, name, model_dir):
        super().__init__(name)
        self.path = os.path.join(model_dir, "model.onnx")
        self.session = None
        self.load()

    def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    # KServe's worker processes receive the model pickled; a session does not pickle, so each
    # process opens its own.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["session"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        known = {i.name for i in self.session.get_inputs()}
        feeds = {}
        for tensor in payload.inputs:
            if tensor.name not in known:
                raise InvalidInput(f"unknown input {tensor.name!r}; the model takes {sorted(known)}")
            feeds[tensor.name] = tensor.as_numpy()
        names = [o.name for o in self.session.get_outputs()]
        outputs = []
        for name, value in zip(names, self.session.run(None, feeds)):
            value = np.asarray(value)
            tensor = InferOutput(name=name, shape=list(value.shape), datatype=from_np_dtype(value.dtype))
            tensor.set_data_from_numpy(value, binary_data=False)
            outputs.append(tensor)
        # A request may leave out its id; the response must carry one.
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=outputs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="folder holding model.onnx")
    parser.add_argument("--name", required=True, help="the model's name in /v2/models/NAME")
    # Also read by KServe's own argument parser (kserve.model_server.args).
    parser.add_argument("--http_port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.name, args.model_dir)
    print(f"kserve {importlib.metadata.version('kserve')}, onnxruntime {ort.__version__}: {model.path} as "
          f"{args.name} on port {args.http_port}, {args.workers} worker(s)", file=sys.stderr)
    kserve.ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False).start([model])


if __name__ == "__main__":
    main()
