#!/usr/bin/env python3
"""Scoring throughput of several agent builds, side by side, in one run.

    python3 scripts/bench/agent_ab.py [--duration 4] [--rounds 5] [--model diabetes] \
        [--connections 8,32] [--batching "{max_batch_size: 8, max_queue_delay_ms: 2}"] \
        LABEL=AGENT_BINARY LABEL=AGENT_BINARY ...

For choosing between builds (a profile setting, a change on the request path): one release
hub, one agent process per binary (each its own device), the same model deployed to each on
its own port with keys on and both protocols, as `scoring.py` deploys it. Then wrk runs take
turns between the agents (round by round, at 8 and 32 connections, Azure ML `/score` and v2
infer), so that a drift of the machine's speed during the run falls on every build alike. Prints
median (worst) req/s per build and the ratio of each to the first. Only one agent is loaded
at a time; the others sit idle.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scoring  # noqa: E402  (the shared helpers: processes, wrk, the edgeship CLI)

CONNECTIONS = "8,32"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="wrk runs per figure (median, worst)")
    parser.add_argument("--model", default="diabetes", choices=scoring.FIXTURE_MODELS + scoring.CNN_MODELS,
                        help="a CNN is sent as one raw image on /score only")
    parser.add_argument("--onnx-python", default=os.environ.get("ONNX_PYTHON"),
                        help="a Python with onnx, numpy, onnxruntime, to write missing CNN files")
    parser.add_argument("--connections", default=CONNECTIONS,
                        help="wrk connection counts, comma-separated (1 measures one client's round trips)")
    parser.add_argument("--batching", default="",
                        help='the deployments\' batching, as in a manifest (e.g. "{max_batch_size: 8, max_queue_delay_ms: 2}")')
    parser.add_argument("builds", nargs="+", metavar="LABEL=AGENT_BINARY")
    args = parser.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    for label, path in builds:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{label}: {path} is not an executable")

    work = tempfile.mkdtemp(prefix="edgeship-ab-")
    processes = []
    try:
        hub_port, mqtt_port = scoring.free_port(), scoring.free_port()
        env = dict(os.environ, RUST_LOG="warn")
        hub = scoring.start(
            [os.path.join(scoring.RELEASE, "edgeship"), "hub", "--no-auth", "--insecure", "--listen", f"127.0.0.1:{hub_port}",
             "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", f"{work}/hub"], f"{work}/hub.log", env=env)
        processes.append(hub)
        scoring.wait_port(hub_port, process=hub, log=f"{work}/hub.log")
        hub_url = f"http://127.0.0.1:{hub_port}"
        cnn = args.model in scoring.CNN_MODELS
        folder = scoring.model_dirs([args.model], os.path.join(scoring.ROOT, "target", "bench-fixtures"),
                                    args.onnx_python)[args.model]
        sample = os.path.join(folder, "sample_input.json")
        extra = ["--sample-input", sample] if os.path.getsize(sample) <= scoring.MAX_SAMPLE_BYTES else []
        scoring.edgeship_cli("model", "register", "--hub", hub_url, "-n", args.model, "-p", folder, *extra)
        targets = []
        for index, (label, path) in enumerate(builds):
            device = f"ab-{index}"
            processes.append(scoring.start(
                [path, "run", "--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--device-id", device,
                 "--data-dir", f"{work}/agent-{index}", "--serve-host", "127.0.0.1",
                 "--insecure", "--director-key", f"{work}/hub/keys/director.pub"],
                f"{work}/agent-{index}.log", env=env))
            port = scoring.free_port()
            manifest = f"{work}/{device}.yaml"
            with open(manifest, "w") as f:
                f.write(f"name: {device}\nmodel: {args.model}:1\n"
                        f"endpoint: {{port: {port}, auth: key, protocols: [azureml, v2]}}\n"
                        f"target: {{devices: [{device}]}}\n"
                        + (f"batching: {args.batching}\n" if args.batching else ""))
            scoring.edgeship_cli("deploy", "apply", "--hub", hub_url, "-f", manifest, "--wait", timeout=600)
            keys = json.loads(scoring.edgeship_cli("deploy", "keys", "--hub", hub_url, device, "-o", "json"))
            targets.append((label, port, {"Authorization": f"Bearer {keys['primary_key']}"}))

        label, port, auth = targets[0]
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/v2/models/{args.model}", headers=auth), timeout=30) as r:
            spec = json.load(r)["inputs"][0]
        with open(os.path.join(folder, "sample_input.json")) as f:
            data = json.load(f)["data"]
        # The bodies as scoring.py sends them: compact JSON, the v2 tensor named as the model says.
        sample, v2_body = f"{work}/score.json", f"{work}/v2.json"
        with open(sample, "w") as f:
            json.dump({"data": data}, f, separators=(",", ":"))
        with open(v2_body, "w") as f:
            json.dump({"inputs": [{"name": spec["name"], "shape": scoring.nested_shape(data),
                                   "datatype": spec["datatype"], "data": scoring.flatten(data)}]},
                      f, separators=(",", ":"))
        json_headers = {"Content-Type": "application/json"}
        routes = (("/score", sample, json_headers), (f"/v2/models/{args.model}/infer", v2_body, json_headers))
        if cnn:
            raw_headers = {"Content-Type": "application/octet-stream",
                           "x-edgeship-shape": ",".join(map(str, scoring.nested_shape(data)))}
            routes = (("/score", os.path.join(folder, "sample_input.bin"), raw_headers),)
        for label, port, auth in targets:
            for path, body, headers in routes:
                scoring.check(f"http://127.0.0.1:{port}{path}", body, {**auth, **headers})

        results = {}
        for _ in range(args.rounds):
            for label, port, auth in targets:
                for path, body, headers in routes:
                    for connections in [int(c) for c in args.connections.split(",")]:
                        rps = scoring.wrk(f"http://127.0.0.1:{port}{path}", body, {**auth, **headers},
                                          connections, args.duration, work)[0]
                        results.setdefault((path.split("/")[-1], connections), {}).setdefault(label, []).append(rps)
        print(f"{args.model}: median (worst) req/s of {args.rounds} alternating runs of {args.duration} s\n")
        labels = [label for label, _ in builds]
        print("| route, connections | " + " | ".join(labels) + " |")
        print("|---" * (len(labels) + 1) + "|")
        for (route, connections), by_label in results.items():
            base = statistics.median(by_label[labels[0]])
            cells = []
            for label in labels:
                runs = by_label[label]
                median = statistics.median(runs)
                ratio = "" if label == labels[0] else f", {median / base:.2f}×"
                cells.append(f"{median:,.0f} ({min(runs):,.0f}){ratio}")
            print(f"| {route}, c{connections} | " + " | ".join(cells) + " |")
    finally:
        for process in reversed(processes):
            scoring.stop(process)


if __name__ == "__main__":
    main()
