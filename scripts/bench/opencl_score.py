#!/usr/bin/env python3
"""What the agent's /score adds to an OpenCL model's own run time.

Starts a release hub and agent, registers resnet50 (the `onnx` wheel's light graph with the
batch axis opened, made by cnn_fixtures.py), deploys it with `runtime: opencl` (the agent
picks a GPU when it has one), then sends one image at a time as a raw float32 body
(`application/octet-stream`, 602,112 bytes) over one keep-alive connection and times each
answer. Compare the median with the graph's own run time from the `cnn` benchmark (same
device, batch 1) to get what the endpoint adds.

    python3 scripts/bench/opencl_score.py [--bin-dir target/release] [--requests 50]
        [--fixtures DIR] [--json FILE]

Needs Python with `onnx` and `numpy` for the fixture (onnxruntime optional).
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import scoring  # noqa: E402  (shares the process helpers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", default=scoring.RELEASE)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--fixtures")
    parser.add_argument("--json")
    args = parser.parse_args()
    scoring.RELEASE = os.path.abspath(args.bin_dir)
    work = tempfile.mkdtemp(prefix="edgeship-opencl-score-")
    fixtures = args.fixtures or f"{work}/fixtures"
    folder = f"{fixtures}/resnet50"
    if not os.path.exists(f"{folder}/model.onnx"):
        subprocess.run([sys.executable, f"{BENCH}/cnn_fixtures.py", "--out", fixtures, "--models", "resnet50"],
                       check=True)
    hub_port, mqtt_port, port = scoring.free_port(), scoring.free_port(), scoring.free_port()
    env = dict(os.environ, RUST_LOG="info")
    processes = [scoring.start(
        [f"{scoring.RELEASE}/edgeship", "hub", "--listen", f"127.0.0.1:{hub_port}",
         "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", f"{work}/hub"], f"{work}/hub.log", env=env)]
    try:
        scoring.wait_port(hub_port, process=processes[0], log=f"{work}/hub.log")
        processes.append(scoring.start(
            [f"{scoring.RELEASE}/edgeship-agent", "run", "--broker", f"mqtt://127.0.0.1:{mqtt_port}",
             "--device-id", "gpu-host", "--data-dir", f"{work}/agent", "--serve-host", "127.0.0.1"],
            f"{work}/agent.log", env=env))
        hub = f"http://127.0.0.1:{hub_port}"
        scoring.edgeship_cli("model", "register", "--hub", hub, "-n", "resnet50", "-p", folder)
        manifest = f"{work}/resnet50.yaml"
        with open(manifest, "w") as f:
            f.write(f"name: resnet50\nmodel: resnet50:1\nruntime: opencl\n"
                    f"endpoint: {{port: {port}, auth: none}}\ntarget: {{devices: [gpu-host]}}\n")
        started = time.time()
        scoring.edgeship_cli("deploy", "apply", "--hub", hub, "-f", manifest, "--wait", timeout=600)
        deployed_s = time.time() - started
        with open(f"{folder}/sample_input.bin", "rb") as f:
            body = f.read()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/octet-stream", "x-edgeship-shape": "1,3,224,224"}
        latencies = []
        for i in range(args.requests + 3):
            start = time.perf_counter()
            connection.request("POST", "/score", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            elapsed = (time.perf_counter() - start) * 1e3
            if response.status != 200:
                raise SystemExit(f"/score answered {response.status}: {answer[:300]!r}")
            if i >= 3:
                latencies.append(elapsed)
        latencies.sort()
        result = {
            "model": "resnet50",
            "deploy_to_healthy_s": round(deployed_s, 2),
            "requests": len(latencies),
            "score_ms_median": round(statistics.median(latencies), 3),
            "score_ms_worst": round(latencies[-1], 3),
            "model_header": response.getheader("x-edgeship-model"),
        }
        print(json.dumps(result))
        with open(f"{work}/agent.log") as log:
            lines = [line.rstrip() for line in log if "opencl" in line.lower() or "OpenCL" in line]
        print("\n".join(lines[-8:]))
        if args.json:
            with open(args.json, "w") as out:
                out.write(json.dumps(result) + "\n")
    finally:
        for process in reversed(processes):
            scoring.stop(process)


if __name__ == "__main__":
    main()
