#!/usr/bin/env python3
"""Scoring throughput side by side, in one run on one machine, with wrk.

    python3 scripts/bench/scoring.py [--duration 5] [--rounds 3] [--aml-python PY]

Servers, each given the same ONNX files (the diabetes ridge and the digits MLP fixtures):
- the edgeship agent (release build, `target/release/`), Azure ML `/score` and OIP v2
  `/v2/models/NAME/infer`, with endpoint keys on (every request sends its Bearer key);
- Azure ML's own scoring server (`azmlinfsrv` from azureml-inference-server-http,
  WORKER_COUNT=2) with `scripts/bench/aml_entry.py` running the model in onnxruntime, when
  `--aml-python` has the package;
- nginx returning a constant body: the ceiling for any HTTP service on this machine.
wrk runs 2 threads at 1, 8 and 32 connections. Each figure is the median of `--rounds` runs,
with the worst beside it. Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "scripts", "fixtures")
RELEASE = os.path.join(ROOT, "target", "release")
CONNECTIONS = [1, 8, 32]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {seconds} s")


def edgeship_cli(*args):
    return subprocess.run([os.path.join(RELEASE, "edgeship"), *args], check=True, capture_output=True, text=True).stdout


def start_edgeship(work, models):
    """Hub + agent; each model deployed with azureml + v2 and auth key. Returns the ports and
    keys by model, and the processes."""
    hub_port, mqtt_port = free_port(), free_port()
    env = dict(os.environ, RUST_LOG="warn")
    hub = subprocess.Popen(
        [os.path.join(RELEASE, "edgeship"), "hub", "--listen", f"127.0.0.1:{hub_port}",
         "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", f"{work}/hub"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(hub_port)
    agent = subprocess.Popen(
        [os.path.join(RELEASE, "edgeship-agent"), "run", "--broker", f"mqtt://127.0.0.1:{mqtt_port}",
         "--device-id", "bench", "--data-dir", f"{work}/agent", "--serve-host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    hub_url = f"http://127.0.0.1:{hub_port}"
    served = {}
    for name in models:
        edgeship_cli("model", "register", "--hub", hub_url, "-n", name, "-p", f"{FIXTURES}/{name}",
                     "--sample-input", f"{FIXTURES}/{name}/sample_input.json")
        port = free_port()
        manifest = f"{work}/{name}.yaml"
        with open(manifest, "w") as f:
            f.write(f"name: {name}\nmodel: {name}:1\nendpoint: {{port: {port}, auth: key, protocols: [azureml, v2]}}\n"
                    "target: {devices: [bench]}\n")
        edgeship_cli("deploy", "apply", "--hub", hub_url, "-f", manifest, "--wait")
        keys = json.loads(edgeship_cli("deploy", "keys", "--hub", hub_url, name, "-o", "json"))
        served[name] = (port, keys["primary_key"])
    return served, [agent, hub]


def start_aml(work, python, name):
    if not python or not os.path.exists(os.path.join(os.path.dirname(python), "azmlinfsrv")):
        return None, None
    port = free_port()
    model_dir = f"{work}/aml-{name}"
    os.makedirs(model_dir, exist_ok=True)
    shutil.copy(f"{FIXTURES}/{name}/model.onnx", model_dir)
    env = dict(os.environ, AZUREML_MODEL_DIR=model_dir, WORKER_COUNT="2")
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(python), "azmlinfsrv"), "--entry_script",
         os.path.join(ROOT, "scripts", "bench", "aml_entry.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port, 120)
    return port, process


def start_nginx(work):
    if not shutil.which("nginx"):
        return None, None
    port = free_port()
    conf = f"{work}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work};
  uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '[[199.8461456298828]]'; }} }} }}
""")
    process = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return port, process


LUA = """wrk.method = "POST"
wrk.body = io.open("{body}"):read("*a")
wrk.headers["Content-Type"] = "application/json"
{auth}"""


def wrk(url, body_path, key, connections, duration, work):
    script = f"{work}/post-{abs(hash((url, key)))}.lua"
    with open(script, "w") as f:
        auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
        f.write(LUA.format(body=body_path, auth=auth))
    out = subprocess.run(
        ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", script, url],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses\n{out}")

    def ms(label):
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, ms("50"), ms("99")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--aml-python", default=os.environ.get("AML_PYTHON"))
    args = parser.parse_args()
    models = ["diabetes", "digits"]
    work = tempfile.mkdtemp(prefix="scoring-bench-")
    processes = []
    try:
        served, started = start_edgeship(work, models)
        processes += started
        nginx_port, nginx = start_nginx(work)
        processes.append(nginx)
        rows = []
        for name in models:
            port, key = served[name]
            with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/v2/models/{name}", headers={"Authorization": f"Bearer {key}"})) as r:
                spec = json.load(r)["inputs"][0]
            data = json.load(open(f"{FIXTURES}/{name}/sample_input.json"))["data"]
            score_body = f"{work}/{name}-score.json"
            json.dump({"data": data}, open(score_body, "w"))
            v2_body = f"{work}/{name}-v2.json"
            flat = [x for row in data for x in row]
            json.dump({"inputs": [{"name": spec["name"], "shape": [len(data), len(data[0])],
                                   "datatype": spec["datatype"], "data": flat}]}, open(v2_body, "w"))
            aml_port, aml = start_aml(work, args.aml_python, name)
            targets = [
                ("edgeship /score (key)", f"http://127.0.0.1:{port}/score", score_body, key),
                ("edgeship v2 infer (key)", f"http://127.0.0.1:{port}/v2/models/{name}/infer", v2_body, key),
            ]
            if aml_port:
                targets.append(("Azure ML server (2 workers)", f"http://127.0.0.1:{aml_port}/score", score_body, None))
            if nginx_port:
                targets.append(("nginx constant body", f"http://127.0.0.1:{nginx_port}/", score_body, None))
            for label, url, body, key_used in targets:
                for c in CONNECTIONS:
                    runs = [wrk(url, body, key_used, c, args.duration, work) for _ in range(args.rounds)]
                    rps = [r[0] for r in runs]
                    rows.append((name, label, c, statistics.median(rps), min(rps),
                                 statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs),
                                 max(r[2] for r in runs)))
                    print(f"{name} {label} c={c}: {rows[-1][3]:.0f} req/s", file=sys.stderr)
            if aml:
                aml.terminate()
                aml.wait()
        by = {(r[0], r[1], r[2]): r[3] for r in rows}
        print(f"median (worst) of {args.rounds} runs of {args.duration} s, wrk -t2 --latency\n")
        print("| model | server | connections | req/s | p50 | p99 | vs Azure ML | vs nginx |")
        print("|---|---|---|---|---|---|---|---|")
        for name, label, c, rps, worst, p50, p99, p99_worst in rows:
            aml = by.get((name, "Azure ML server (2 workers)", c))
            ceiling = by.get((name, "nginx constant body", c))
            vs_aml = f"{rps / aml:.1f}×" if aml and label.startswith("edgeship") else ""
            vs_nginx = f"{100 * rps / ceiling:.0f}%" if ceiling and label.startswith("edgeship") else ""
            print(f"| {name} | {label} | {c} | {rps:,.0f} ({worst:,.0f}) | {p50:.2f} ms | {p99:.2f} ms ({p99_worst:.2f}) | {vs_aml} | {vs_nginx} |")
    finally:
        for p in processes:
            if p:
                p.kill()


if __name__ == "__main__":
    main()
