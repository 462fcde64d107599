"""Scoring latency of one agent binary, for side-by-side comparisons of builds.

Usage: python3 scripts/score_latency.py AGENT_BINARY HUB_BINARY

Starts a hub and an agent on loopback ports, deploys the digits fixture, then sends 3,000
POST /score requests (5 rows each) over one keep-alive connection and prints the median and
p99 latency of the last 2,500, as the client sees them. Standard library only.
"""
import http.client, json, os, subprocess, sys, tempfile, time, random, statistics
agent, hub = sys.argv[1], sys.argv[2]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
d = tempfile.mkdtemp()
port = random.randint(20000, 40000); mport = port + 1; sport = port + 2
env = dict(os.environ, RUST_LOG="warn")
h = subprocess.Popen([hub, "hub", "--no-auth", "--insecure", "--listen", f"127.0.0.1:{port}", "--mqtt-listen", f"127.0.0.1:{mport}", "--data-dir", f"{d}/hub"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
time.sleep(1.5)
a = subprocess.Popen([agent, "run", "--broker", f"mqtt://127.0.0.1:{mport}", "--device-id", "bench", "--data-dir", f"{d}/agent", "--insecure", "--director-key", f"{d}/hub/keys/director.pub"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
hub_url = f"http://127.0.0.1:{port}"
subprocess.run([hub, "model", "register", "--hub", hub_url, "-n", "digits", "-p", f"{root}/digits", "--sample-input", f"{root}/digits/sample_input.json"], check=True, stdout=subprocess.DEVNULL)
time.sleep(1)
subprocess.run([hub, "deploy", "create", "--hub", hub_url, "digits", "--model", "digits:1", "--port", str(sport), "--device", "bench", "--wait"], check=True, stdout=subprocess.DEVNULL)
body = open(f"{root}/digits/sample_input.json").read()
conn = http.client.HTTPConnection("127.0.0.1", sport)
lat = []
for i in range(3000):
    t = time.perf_counter()
    conn.request("POST", "/score", body, {"content-type": "application/json"})
    r = conn.getresponse(); r.read()
    assert r.status == 200
    lat.append((time.perf_counter() - t) * 1e6)
lat = lat[500:]
lat.sort()
print(f"median {statistics.median(lat):.0f} us, p99 {lat[int(len(lat)*0.99)]:.0f} us")
a.kill(); h.kill()
