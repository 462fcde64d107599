#!/usr/bin/env python3
"""Scoring throughput side by side, in one run on one machine, with wrk.

    python3 scripts/bench/scoring.py [--duration 5] [--rounds 3] [--models diabetes,digits]
        [--aml-python PY] [--kserve-python PY] [--onnx-python PY] [--cnn-dir DIR]

Models (`--models`, comma-separated, in this order or any):
- `diabetes`, `digits`: the fixtures in `scripts/fixtures/` (a ridge regression, the sample is
  2 rows × 10; an MLP classifier, 1 row × 64);
- `squeezenet`, `resnet50`: real CNN graphs from the `onnx` wheel, one 1×3×224×224 image,
  taken from `--cnn-dir` (`target/bench-fixtures/NAME/`). Where they are missing,
  `scripts/bench/cnn_fixtures.py` writes them, run by `--onnx-python` (env `ONNX_PYTHON`,
  else this Python), which needs `pip install onnx numpy onnxruntime`.

Servers, each given the same ONNX file:
- the edgeship agent (release build, `target/release/`), with endpoint keys on (every request
  sends its Bearer key): Azure ML `/score` with the JSON `{"data": ...}` body, for the CNNs also
  with the raw image (`application/octet-stream`, little-endian float32, shape in
  `x-edgeship-shape`), and OIP v2 `/v2/models/NAME/infer` with JSON tensors;
- the same model in a second edgeship deployment with dynamic batching
  (`batching: {max_batch_size: 8, max_queue_delay_ms: 2}`), on `/score` (the raw body for CNNs);
  its `/metrics` gives the mean batch size at each connection count;
- Azure ML's own scoring server (`azmlinfsrv` from azureml-inference-server-http,
  WORKER_COUNT=2) with `scripts/bench/aml_entry.py` running the model in onnxruntime, when
  `--aml-python` (env `AML_PYTHON`) has the package; the JSON `/score` body;
- KServe's Python model server (`scripts/bench/kserve_server.py`: a `kserve.Model` running the
  model in onnxruntime, one thread per worker, 2 uvicorn workers, REST only), when
  `--kserve-python` (env `KSERVE_PYTHON`) can import kserve and onnxruntime; the same v2 body as
  edgeship's v2 infer;
- nginx returning a constant body: the ceiling for any HTTP service on this machine.

wrk runs 2 threads with `--timeout 30s` at 1, 8 and 32 connections (a CNN request takes
10–300 ms of a core; timed-out requests are counted and listed). Each figure is the median of `--rounds` runs, with the
worst beside it. Every server is sent one request first, and must answer 200. Prints a markdown
table for docs/benchmarks.md, then per model what batching changed: the batched/unbatched req/s
at the most connections and the p50 at 1 connection. Server logs go to a temporary folder,
kept (and named) when the run fails.
"""

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "scripts", "bench")
FIXTURES = os.path.join(ROOT, "scripts", "fixtures")
RELEASE = os.path.join(ROOT, "target", "release")
FIXTURE_MODELS = ("diabetes", "digits")
CNN_MODELS = ("squeezenet", "resnet50")
CONNECTIONS = [1, 8, 32]
CNN_CONNECTIONS = [1, 8, 32]
WRK_TIMEOUT = "30s"
BATCHING = "{max_batch_size: 8, max_queue_delay_ms: 2}"
# The hub keeps a registered sample input only up to 1 MiB (hub/src/registry/validate.rs);
# a larger one (a CNN's image as JSON) is left out, and the device self-tests with zeros.
MAX_SAMPLE_BYTES = 1024 * 1024

AML_LABEL = "Azure ML server (2 workers)"
KSERVE_LABEL = "KServe server (onnxruntime)"
NGINX_LABEL = "nginx constant body"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command, log, **kwargs):
    """A server in its own process group, so that `stop` reaches its workers too."""
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop(process):
    """SIGTERM to the server's process group, SIGKILL to what is left after 10 s. Once."""
    if process is None or getattr(process, "stopped", False):
        return
    process.stopped = True
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def alive(process, log):
    if process is not None and process.poll() is not None:
        raise SystemExit(f"the server exited with {process.returncode}; its log: {log}")


def wait_port(port, seconds=60, process=None, log=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        alive(process, log)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {seconds} s" + (f"; log: {log}" if log else ""))


def wait_ready(url, seconds, process, log):
    """Until GET `url` answers 200 (a server whose port opens before its workers are up)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        alive(process, log)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} is not ready after {seconds} s; log: {log}")


def check(url, body_path, headers):
    """One request, which must answer 200: a wrong body fails here, not as wrk's error count.
    Also the warm-up (a CNN's first run plans and allocates)."""
    with open(body_path, "rb") as f:
        request = urllib.request.Request(url, data=f.read(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            r.read()
    except urllib.error.HTTPError as err:
        raise SystemExit(f"{url}: {err.code} {err.read()[:500]!r}")


def edgeship_cli(*args, timeout=120):
    try:
        return subprocess.run([os.path.join(RELEASE, "edgeship"), *args], check=True, capture_output=True,
                              text=True, timeout=timeout).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"edgeship {' '.join(args)}: exit {err.returncode}\n{err.stderr}")


def python_has(python, *modules):
    if not python:
        return False
    try:
        return subprocess.run([python, "-c", f"import {', '.join(modules)}"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def model_dirs(names, cnn_dir, onnx_python):
    """Each model's folder (model.onnx, sample_input.json, and for CNNs sample_input.bin),
    writing the CNNs' with cnn_fixtures.py where missing."""
    wanted = ("model.onnx", "sample_input.json", "sample_input.bin")
    missing = [n for n in names if n in CNN_MODELS
               and not all(os.path.exists(os.path.join(cnn_dir, n, f)) for f in wanted)]
    if missing:
        python = onnx_python or sys.executable
        print(f"writing {', '.join(missing)} into {cnn_dir} with {python}", file=sys.stderr)
        try:
            subprocess.run([python, os.path.join(BENCH, "cnn_fixtures.py"), "--out", cnn_dir,
                            "--models", ",".join(missing)], check=True, timeout=300, stdout=sys.stderr)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            raise SystemExit(f"cnn_fixtures.py failed ({err}): give --onnx-python (or ONNX_PYTHON) a Python "
                             "with `pip install onnx numpy onnxruntime`")
    return {n: os.path.join(FIXTURES if n in FIXTURE_MODELS else cnn_dir, n) for n in names}


def start_edgeship(work, dirs):
    """Hub + agent; each model deployed twice with azureml + v2 and auth key, as NAME and as
    NAME-batched with batching. Returns {name: {"plain"|"batched": (port, key)}} and the
    processes."""
    hub_port, mqtt_port = free_port(), free_port()
    env = dict(os.environ, RUST_LOG="warn")
    processes = [start(
        [os.path.join(RELEASE, "edgeship"), "hub", "--no-auth", "--insecure", "--listen", f"127.0.0.1:{hub_port}",
         "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", f"{work}/hub"], f"{work}/hub.log", env=env)]
    wait_port(hub_port, process=processes[0], log=f"{work}/hub.log")
    processes.append(start(
        [os.path.join(RELEASE, "edgeship-agent"), "run", "--broker", f"mqtt://127.0.0.1:{mqtt_port}",
         "--device-id", "bench", "--data-dir", f"{work}/agent", "--serve-host", "127.0.0.1",
         "--insecure", "--director-key", f"{work}/hub/keys/director.pub"],
        f"{work}/agent.log", env=env))
    hub_url = f"http://127.0.0.1:{hub_port}"
    served = {}
    for name, folder in dirs.items():
        sample = os.path.join(folder, "sample_input.json")
        extra = ["--sample-input", sample] if os.path.getsize(sample) <= MAX_SAMPLE_BYTES else []
        edgeship_cli("model", "register", "--hub", hub_url, "-n", name, "-p", folder, *extra)
        served[name] = {}
        for kind, deployment, batching in (("plain", name, ""), ("batched", f"{name}-batched", f"batching: {BATCHING}\n")):
            port = free_port()
            manifest = f"{work}/{deployment}.yaml"
            with open(manifest, "w") as f:
                f.write(f"name: {deployment}\nmodel: {name}:1\n"
                        f"endpoint: {{port: {port}, auth: key, protocols: [azureml, v2]}}\n"
                        f"target: {{devices: [bench]}}\n{batching}")
            # A CNN's load, self-test and batching probe take seconds on a small machine.
            edgeship_cli("deploy", "apply", "--hub", hub_url, "-f", manifest, "--wait", timeout=600)
            keys = json.loads(edgeship_cli("deploy", "keys", "--hub", hub_url, deployment, "-o", "json"))
            served[name][kind] = (port, keys["primary_key"])
    return served, processes


def start_aml(work, python, name, folder):
    if not python or not os.path.exists(os.path.join(os.path.dirname(python), "azmlinfsrv")):
        return None, None
    port = free_port()
    model_dir = f"{work}/aml-{name}"
    os.makedirs(model_dir, exist_ok=True)
    shutil.copy(f"{folder}/model.onnx", model_dir)
    env = dict(os.environ, AZUREML_MODEL_DIR=model_dir, WORKER_COUNT="2")
    log = f"{work}/aml-{name}.log"
    process = start(
        [os.path.join(os.path.dirname(python), "azmlinfsrv"), "--entry_script",
         os.path.join(BENCH, "aml_entry.py"), "--port", str(port)], log, env=env)
    wait_port(port, 120, process, log)
    return port, process


def start_kserve(work, python, name, folder):
    port = free_port()
    log = f"{work}/kserve-{name}.log"
    process = start([python, os.path.join(BENCH, "kserve_server.py"), "--model-dir", folder, "--name", name,
                     "--http_port", str(port), "--workers", "2"], log)
    wait_ready(f"http://127.0.0.1:{port}/v2/models/{name}/ready", 120, process, log)
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
  uwsgi_temp_path {work}; scgi_temp_path {work}; client_max_body_size 64m;
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '[[199.8461456298828]]'; }} }} }}
""")
    process = start(["nginx", "-c", conf], f"{work}/nginx.log")
    wait_port(port, process=process, log=f"{work}/nginx.log")
    return port, process


def nested_shape(data):
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        data = data[0] if data else None
    return shape


def flatten(data):
    if not isinstance(data, list):
        return [data]
    return [x for item in data for x in flatten(item)]


WRK_SCRIPTS = itertools.count()


def wrk(url, body_path, headers, connections, duration, work):
    """(req/s, p50 ms, p99 ms, requests timed out) of one wrk run."""
    script = f"{work}/post-{next(WRK_SCRIPTS)}.lua"
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f'wrk.body = io.open("{body_path}", "rb"):read("*a")\n')
        for name, value in headers.items():
            f.write(f'wrk.headers["{name}"] = "{value}"\n')
    out = subprocess.run(
        ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{duration}s",
         "--timeout", WRK_TIMEOUT, "--latency", "-s", script, url],
        check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses\n{out}")
    timeouts = re.search(r"Socket errors: .*timeout (\d+)", out)

    def ms(label):
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, ms("50"), ms("99"), int(timeouts.group(1)) if timeouts else 0


def batch_counters(port, key):
    """(requests, batches) the batched deployment's runtime calls have carried so far, from
    its /metrics; None where the agent does not batch this model (it logs why)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read().decode()
    total = re.findall(r"^edgeship_batch_size_sum\{[^}]*\} (\d+)", text, re.M)
    count = re.findall(r"^edgeship_batch_size_count\{[^}]*\} (\d+)", text, re.M)
    if not total:
        return None
    return sum(map(int, total)), sum(map(int, count))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per figure (median, worst)")
    parser.add_argument("--models", default=",".join(FIXTURE_MODELS),
                        help=f"comma-separated, of {', '.join(FIXTURE_MODELS + CNN_MODELS)}")
    parser.add_argument("--aml-python", default=os.environ.get("AML_PYTHON"),
                        help="a Python with azureml-inference-server-http and onnxruntime (env AML_PYTHON)")
    parser.add_argument("--kserve-python", default=os.environ.get("KSERVE_PYTHON"),
                        help="a Python with kserve and onnxruntime (env KSERVE_PYTHON)")
    parser.add_argument("--onnx-python", default=os.environ.get("ONNX_PYTHON"),
                        help="a Python with onnx, numpy, onnxruntime, to write missing CNN files (env ONNX_PYTHON)")
    parser.add_argument("--cnn-dir", default=os.path.join(ROOT, "target", "bench-fixtures"),
                        help="where the CNNs' NAME/model.onnx and samples are (written if missing)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in FIXTURE_MODELS + CNN_MODELS]
    if unknown or not models:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(FIXTURE_MODELS + CNN_MODELS)}")
    kserve_python = args.kserve_python if python_has(args.kserve_python, "kserve", "onnxruntime") else None
    if args.kserve_python and not kserve_python:
        print(f"{args.kserve_python} cannot import kserve and onnxruntime: no KServe rows", file=sys.stderr)
    dirs = model_dirs(models, os.path.abspath(args.cnn_dir), args.onnx_python)
    work = tempfile.mkdtemp(prefix="scoring-bench-")
    print(f"server logs in {work}", file=sys.stderr)
    processes = []
    rows, timeouts, batch_sizes, batch_pairs = [], [], {}, {}
    try:
        served, started = start_edgeship(work, dirs)
        processes += started
        nginx_port, nginx = start_nginx(work)
        processes.append(nginx)
        for name in models:
            cnn = name in CNN_MODELS
            connections = CNN_CONNECTIONS if cnn else CONNECTIONS
            port, key = served[name]["plain"]
            batched_port, batched_key = served[name]["batched"]
            with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/v2/models/{name}", headers={"Authorization": f"Bearer {key}"}),
                    timeout=30) as r:
                spec = json.load(r)["inputs"][0]
            with open(f"{dirs[name]}/sample_input.json") as f:
                data = json.load(f)["data"]
            score_body = f"{work}/{name}-score.json"
            with open(score_body, "w") as f:
                json.dump({"data": data}, f, separators=(",", ":"))
            v2_body = f"{work}/{name}-v2.json"
            with open(v2_body, "w") as f:
                json.dump({"inputs": [{"name": spec["name"], "shape": nested_shape(data),
                                       "datatype": spec["datatype"], "data": flatten(data)}]}, f, separators=(",", ":"))
            json_headers = {"Content-Type": "application/json"}
            auth = {"Authorization": f"Bearer {key}"}
            batched_auth = {"Authorization": f"Bearer {batched_key}"}
            score, v2 = f"http://127.0.0.1:{port}/score", f"http://127.0.0.1:{port}/v2/models/{name}/infer"
            batched_score = f"http://127.0.0.1:{batched_port}/score"
            targets = [("edgeship /score (key)", score, score_body, {**json_headers, **auth})]
            if cnn:
                raw_body = f"{dirs[name]}/sample_input.bin"
                raw_headers = {"Content-Type": "application/octet-stream",
                               "x-edgeship-shape": ",".join(map(str, nested_shape(data)))}
                targets.append(("edgeship /score raw (key)", score, raw_body, {**raw_headers, **auth}))
                batched = ("edgeship /score raw batched (key)", batched_score, raw_body, {**raw_headers, **batched_auth})
                batch_pairs[name] = (batched[0], "edgeship /score raw (key)")
            else:
                batched = ("edgeship /score batched (key)", batched_score, score_body, {**json_headers, **batched_auth})
                batch_pairs[name] = (batched[0], "edgeship /score (key)")
            targets += [("edgeship v2 infer (key)", v2, v2_body, {**json_headers, **auth}), batched]
            aml_port, aml = start_aml(work, args.aml_python, name, dirs[name])
            processes.append(aml)
            if aml_port:
                targets.append((AML_LABEL, f"http://127.0.0.1:{aml_port}/score", score_body, json_headers))
            kserve_port, kserve = start_kserve(work, kserve_python, name, dirs[name]) if kserve_python else (None, None)
            processes.append(kserve)
            if kserve_port:
                targets.append((KSERVE_LABEL, f"http://127.0.0.1:{kserve_port}/v2/models/{name}/infer", v2_body,
                                json_headers))
            if nginx_port:
                targets.append((NGINX_LABEL, f"http://127.0.0.1:{nginx_port}/", score_body, json_headers))
            # Every server answers before any is measured: a server still starting (Azure ML's
            # workers import onnxruntime for seconds after its port opens) would take the
            # cores from the first figures. Several requests reach both of its workers.
            for label, url, body, headers in targets:
                for _ in range(4 if label == AML_LABEL else 1):
                    check(url, body, headers)
            for label, url, body, headers in targets:
                for c in connections:
                    before = batch_counters(batched_port, batched_key) if label == batched[0] else None
                    runs = [wrk(url, body, headers, c, args.duration, work) for _ in range(args.rounds)]
                    if before is not None:
                        after = batch_counters(batched_port, batched_key)
                        requests, batches = after[0] - before[0], after[1] - before[1]
                        batch_sizes[(name, c)] = requests / batches if batches else None
                    rps = [r[0] for r in runs]
                    rows.append((name, label, c, statistics.median(rps), min(rps),
                                 statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs),
                                 max(r[2] for r in runs)))
                    if sum(r[3] for r in runs):
                        timeouts.append(f"{name} {label} at {c}: {sum(r[3] for r in runs)}")
                    print(f"{name} {label} c={c}: {rows[-1][3]:.0f} req/s", file=sys.stderr)
            stop(aml)
            stop(kserve)
        print_results(args, models, rows, timeouts, batch_sizes, batch_pairs)
    except BaseException:
        print(f"server logs kept in {work}", file=sys.stderr)
        work = None
        raise
    finally:
        for p in reversed(processes):
            stop(p)
        if work:
            shutil.rmtree(work, ignore_errors=True)


def print_results(args, models, rows, timeouts, batch_sizes, batch_pairs):
    by = {(r[0], r[1], r[2]): r for r in rows}
    print(f"median (worst) of {args.rounds} runs of {args.duration} s, wrk -t2 --latency --timeout {WRK_TIMEOUT}\n")
    print("| model | server | connections | req/s | p50 | p99 | vs Azure ML | vs KServe | vs nginx |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, label, c, rps, worst, p50, p99, p99_worst in rows:
        ours = label.startswith("edgeship")

        def ratio(other, percent=False):
            row = by.get((name, other, c))
            if not (ours and row and row[3]):
                return ""
            return f"{100 * rps / row[3]:.0f}%" if percent else f"{rps / row[3]:.1f}×"

        print(f"| {name} | {label} | {c} | {rps:,.0f} ({worst:,.0f}) | {p50:.2f} ms | {p99:.2f} ms ({p99_worst:.2f}) "
              f"| {ratio(AML_LABEL)} | {ratio(KSERVE_LABEL)} | {ratio(NGINX_LABEL, percent=True)} |")
    if timeouts:
        print(f"\nRequests that timed out (over {WRK_TIMEOUT}, not in the figures), all rounds: " + "; ".join(timeouts))
    print(f"\nBatching ({BATCHING}), the batched deployment against the same body unbatched:\n")
    for name in models:
        batched, plain = batch_pairs[name]
        cs = CNN_CONNECTIONS if name in CNN_MODELS else CONNECTIONS
        top, low = cs[-1], cs[0]
        b_top, p_top, b_low, p_low = (by.get((name, label, c)) for label, c in
                                      ((batched, top), (plain, top), (batched, low), (plain, low)))
        if not all((b_top, p_top, b_low, p_low)) or not (b_top[3] and p_top[3]):
            print(f"- {name}: no comparison (a run answered nothing in time)")
            continue
        sizes = [batch_sizes.get((name, c)) for c in cs]
        mean = ("not batching (the agent's log says why)" if all(s is None for s in sizes) else
                "mean batch " + ", ".join("–" if s is None else f"{s:.1f}" for s in sizes)
                + f" at {', '.join(map(str, cs))} connections")
        print(f"- {name}: {b_top[3] / p_top[3]:.2f}× the req/s at {top} connections ({b_top[3]:,.0f} vs "
              f"{p_top[3]:,.0f}); p50 at {low} connection {b_low[5] - p_low[5]:+.2f} ms ({b_low[5]:.2f} vs "
              f"{p_low[5]:.2f} ms); {mean}")


if __name__ == "__main__":
    main()
