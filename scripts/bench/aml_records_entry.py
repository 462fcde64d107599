"""Azure ML entry script for the entry-module benchmark: the records example's work done the
way an Azure ML user writes it, in Python: the Power BI record list into a pandas DataFrame,
its columns in the model's order into a numpy array, onnxruntime on the diabetes model, one
prediction per record out.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import pandas as pd

COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
session = None


def init():
    global session
    options = ort.SessionOptions()
    # One thread per worker: WORKER_COUNT workers share the machine's cores.
    options.intra_op_num_threads = 1
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.onnx")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(raw_data):
    frame = pd.DataFrame.from_records(json.loads(raw_data)["data"])
    rows = frame[COLUMNS].to_numpy(dtype=np.float32)
    (predictions,) = session.run(None, {session.get_inputs()[0].name: rows})
    return predictions.ravel().tolist()
