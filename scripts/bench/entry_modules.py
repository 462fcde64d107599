#!/usr/bin/env python3
"""What an entry module costs, side by side in one run on one machine.

    python3 scripts/bench/entry_modules.py [--duration 5] [--rounds 5] [--restarts 5]
        [--aml-python PY]

Needs release binaries (`cargo build --release --bins`), the records module
(`just modules`), wrk, and for the Azure ML comparison a Python with
`azureml-inference-server-http onnxruntime numpy pandas` (`--aml-python`, env `AML_PYTHON`).

One hub and one agent on loopback; the diabetes fixture deployed twice on the same device:
- `plain`: `/score` with the model's own body, `{"data": [[10 floats]]}`;
- `records`: the same model behind the records module, `{"data": [{"age": …, …}]}` (the
  pandas-style records Power BI sends), one record per request.

Figures, each the median (and worst) of `--rounds` runs:
1. per-request overhead: wrk -c1 p50 of `records` minus that of `plain`, the two runs back to
   back in each round;
2. throughput at 8 connections, both, and the ratio;
3. cold start of a cached module: the agent restarted `--restarts` times; each start's
   "entry module ready" line for a third deployment of the module with one instance (cache
   load, instantiation and `init`) in its log;
4. Azure ML's own server (`azmlinfsrv`, WORKER_COUNT=2) running `aml_records_entry.py` (pandas,
   numpy, onnxruntime) on the same records body: p50 at c1 and req/s at c8, and the ratios.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scoring import (FIXTURES, RELEASE, ROOT, edgeship_cli, free_port, start, stop, wait_port,  # noqa: E402
                     check, wrk)

MODULE = os.path.join(ROOT, "target", "wasm", "wasm32-wasip2", "release", "records.wasm")
COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def bodies(work):
    row = json.load(open(os.path.join(FIXTURES, "diabetes", "expected.json")))["inputs"][0]
    plain, records = f"{work}/plain.json", f"{work}/records.json"
    with open(plain, "w") as f:
        json.dump({"data": [row]}, f)
    with open(records, "w") as f:
        json.dump({"data": [dict(zip(COLUMNS, row))]}, f)
    return plain, records


def start_agent(work, mqtt_port):
    return start([os.path.join(RELEASE, "edgeship-agent"), "run", "--broker", f"mqtt://127.0.0.1:{mqtt_port}",
                  "--device-id", "bench", "--data-dir", f"{work}/agent", "--serve-host", "127.0.0.1",
                  "--insecure", "--director-key", f"{work}/hub/keys/director.pub"],
                 f"{work}/agent.log", env=dict(os.environ, RUST_LOG="info"))


def ready_ms(log, after):
    """The cache-load time of the `after`-th and later "entry module ready" lines."""
    text = open(log).read()
    found = re.findall(r"entry module ready in ([\d.]+) ms deployment=cold\b.*?from_cache=(true|false)", text)
    return found[after:], text


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--aml-python", default=os.environ.get("AML_PYTHON"))
    args = parser.parse_args()
    for path in (os.path.join(RELEASE, "edgeship"), os.path.join(RELEASE, "edgeship-agent"), MODULE):
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: cargo build --release --bins; just modules")
    work = tempfile.mkdtemp(prefix="entry-bench-")
    processes = []
    try:
        hub_port, mqtt_port = free_port(), free_port()
        processes.append(start([os.path.join(RELEASE, "edgeship"), "hub", "--no-auth", "--insecure", "--listen", f"127.0.0.1:{hub_port}",
                                "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", f"{work}/hub"],
                               f"{work}/hub.log", env=dict(os.environ, RUST_LOG="warn")))
        wait_port(hub_port, process=processes[0], log=f"{work}/hub.log")
        agent = start_agent(work, mqtt_port)
        hub = f"http://127.0.0.1:{hub_port}"
        diabetes = os.path.join(FIXTURES, "diabetes")
        edgeship_cli("model", "register", "--hub", hub, "-n", "diabetes", "-p", diabetes,
                     "--sample-input", f"{diabetes}/sample_input.json")
        edgeship_cli("module", "register", "--hub", hub, "-n", "records", "-p", MODULE)
        # `cold` is the module with one instance, for the cold-start figure alone.
        ports = {"plain": free_port(), "records": free_port(), "cold": free_port()}
        modules = {"records": "entry_module: records:1\n", "cold": "entry_module: records:1\nsandbox: {instances: 1}\n"}
        for name, port in ports.items():
            module = modules.get(name, "")
            with open(f"{work}/{name}.yaml", "w") as f:
                f.write(f"name: {name}\nmodel: diabetes:1\nendpoint: {{port: {port}}}\n"
                        f"target: {{devices: [bench]}}\n{module}")
            edgeship_cli("deploy", "apply", "--hub", hub, "-f", f"{work}/{name}.yaml", "--wait", timeout=300)
        plain_body, records_body = bodies(work)
        json_headers = {"content-type": "application/json"}
        urls = {name: f"http://127.0.0.1:{port}/score" for name, port in ports.items()}
        check(urls["plain"], plain_body, json_headers)
        check(urls["records"], records_body, json_headers)

        added, p50s, rps = [], {"plain": [], "records": []}, {"plain": [], "records": []}
        for _ in range(args.rounds):
            plain = wrk(urls["plain"], plain_body, json_headers, 1, args.duration, work)
            records = wrk(urls["records"], records_body, json_headers, 1, args.duration, work)
            p50s["plain"].append(plain[1] * 1000)
            p50s["records"].append(records[1] * 1000)
            added.append((records[1] - plain[1]) * 1000)
            for name, body in (("plain", plain_body), ("records", records_body)):
                rps[name].append(wrk(urls[name], body, json_headers, 8, args.duration, work)[0])

        # Cold start from the compiled cache: restart the agent; it reloads the module.
        starts = []
        for _ in range(args.restarts):
            stop(agent)
            shutil.copy(f"{work}/agent.log", f"{work}/agent-{len(starts)}.log")
            agent = start_agent(work, mqtt_port)
            deadline = time.time() + 60
            while time.time() < deadline:
                found, _ = ready_ms(f"{work}/agent.log", 0)
                if found:
                    break
                time.sleep(0.2)
            if not found:
                raise SystemExit(f"the restarted agent did not load the module; log: {work}/agent.log")
            ms, how = found[-1]
            if how != "true":
                raise SystemExit(f"the restarted agent compiled the module again ({how}); log: {work}/agent.log")
            starts.append(float(ms))
        processes.append(agent)

        aml = None
        aml_python = args.aml_python
        if aml_python and os.path.exists(os.path.join(os.path.dirname(aml_python), "azmlinfsrv")):
            model_dir = f"{work}/aml-model"
            os.makedirs(model_dir)
            shutil.copy(f"{diabetes}/model.onnx", model_dir)
            port = free_port()
            process = start([os.path.join(os.path.dirname(aml_python), "azmlinfsrv"), "--entry_script",
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "aml_records_entry.py"),
                             "--port", str(port)], f"{work}/aml.log",
                            env=dict(os.environ, AZUREML_MODEL_DIR=model_dir, WORKER_COUNT="2"))
            processes.append(process)
            wait_port(port, 120, process, f"{work}/aml.log")
            url = f"http://127.0.0.1:{port}/score"
            check(url, records_body, json_headers)
            aml = {"p50": [], "rps": []}
            for _ in range(args.rounds):
                aml["p50"].append(wrk(url, records_body, json_headers, 1, args.duration, work)[1] * 1000)
                aml["rps"].append(wrk(url, records_body, json_headers, 8, args.duration, work)[0])

        def mw(values, worst=max):
            return f"{statistics.median(values):.1f} ({worst(values):.1f})"

        print(f"median (worst) of {args.rounds} runs of {args.duration} s, wrk --latency; "
              f"{args.restarts} agent restarts\n")
        print("| Figure | plain /score | records module | added / ratio |")
        print("|---|---|---|---|")
        print(f"| p50 at 1 connection, µs | {mw(p50s['plain'])} | {mw(p50s['records'])} | "
              f"+{mw(added)} µs |")
        ratio = [r / p for r, p in zip(rps["records"], rps["plain"])]
        print(f"| req/s at 8 connections | {mw(rps['plain'], min)} | {mw(rps['records'], min)} | "
              f"{mw(ratio, min)}× |")
        print(f"| cold start of the cached module (1 instance), ms | | {mw(starts)} | |")
        if aml:
            p50_ratio = [a / r for a, r in zip(aml["p50"], p50s["records"])]
            rps_ratio = [r / a for r, a in zip(rps["records"], aml["rps"])]
            print(f"| Azure ML server, score.py with pandas: p50 at c1, µs | | {mw(aml['p50'])} | "
                  f"records module {mw(p50_ratio, min)}× faster |")
            print(f"| Azure ML server: req/s at 8 connections | | {mw(aml['rps'], min)} | "
                  f"records module {mw(rps_ratio, min)}× more |")
        else:
            print("\n(no Azure ML comparison: give --aml-python a Python with azureml-inference-server-http, "
                  "onnxruntime, numpy and pandas)")
    finally:
        for process in processes:
            stop(process)
        print(f"\nlogs: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
