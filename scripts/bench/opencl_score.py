#!/usr/bin/env python3
"""What the agent's /score adds to an OpenCL model's own run time.

Starts a release hub and agent, registers resnet50 (the `onnx` wheel's light graph with the
batch axis opened, made by cnn_fixtures.py), deploys it with `runtime: opencl` (the agent
picks a GPU when it has one), then sends one image at a time as a raw float32 body
(`application/octet-stream`, 602,112 bytes) over one keep-alive connection and times each
answer. Compare the median with the graph's own run time from the `cnn` benchmark (same
device, batch 1) to get what the endpoint adds. Then it measures throughput with
`--concurrency` clients for `--duration` seconds against that deployment and against a second
one with dynamic batching (`batching: {max_batch_size: 16, max_queue_delay_ms: 5}`): what
batching gains on an accelerator.

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


def throughput(port, body, headers, clients, seconds):
    """Answers per second with `clients` threads, each on its own keep-alive connection,
    sending for `seconds` (after one warm-up request each)."""
    import threading
    counts = [0] * clients
    failures = []
    start_at = time.time() + 2.0
    stop_at = start_at + seconds

    def client(i):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        def one():
            connection.request("POST", "/score", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
        one()
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            one()
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {failures[:5]}")
    return round(sum(counts) / seconds, 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", default=scoring.RELEASE)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--fixtures")
    parser.add_argument("--json")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
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
        [f"{scoring.RELEASE}/edgeship", "hub", "--no-auth", "--insecure", "--listen", f"127.0.0.1:{hub_port}",
         "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", f"{work}/hub"], f"{work}/hub.log", env=env)]
    try:
        scoring.wait_port(hub_port, process=processes[0], log=f"{work}/hub.log")
        processes.append(scoring.start(
            [f"{scoring.RELEASE}/edgeship-agent", "run", "--broker", f"mqtt://127.0.0.1:{mqtt_port}",
             "--device-id", "gpu-host", "--data-dir", f"{work}/agent", "--serve-host", "127.0.0.1",
             "--insecure", "--director-key", f"{work}/hub/keys/director.pub"],
            f"{work}/agent.log", env=env))
        hub = f"http://127.0.0.1:{hub_port}"
        scoring.edgeship_cli("model", "register", "--hub", hub, "-n", "resnet50", "-p", folder)
        batched_port = scoring.free_port()
        started = time.time()
        for name, serve_port, batching in (
                ("resnet50", port, ""),
                ("resnet50-batched", batched_port, "batching: {max_batch_size: 16, max_queue_delay_ms: 5}\n")):
            manifest = f"{work}/{name}.yaml"
            with open(manifest, "w") as f:
                f.write(f"name: {name}\nmodel: resnet50:1\nruntime: opencl\n"
                        f"endpoint: {{port: {serve_port}, auth: none}}\ntarget: {{devices: [gpu-host]}}\n{batching}")
            scoring.edgeship_cli("deploy", "apply", "--hub", hub, "-f", manifest, "--wait", timeout=600)
            if name == "resnet50":
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
        for label, serve_port in (("plain", port), ("batched", batched_port)):
            result[f"images_per_s_{label}_c{args.concurrency}"] = throughput(
                serve_port, body, headers, args.concurrency, args.duration)
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
