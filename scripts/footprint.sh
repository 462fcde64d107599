#!/usr/bin/env bash
# Footprint of the release binaries: stripped sizes and the agent's idle RSS (three runs), and
# with --cold the time of a cold `cargo build --release --bin edgeship` (what `edgeship dev`
# costs a first build). Results and history: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--cold" ]; then
    rm -rf target/release
    start=$(date +%s)
    cargo build --release --bin edgeship
    echo "cold build of edgeship: $(( $(date +%s) - start )) s"
fi
cargo build --release --bins

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for bin in edgeship-agent edgeship; do
    cp "target/release/$bin" "$work/$bin"
    strip "$work/$bin"
    echo "$bin stripped: $(stat -c %s "$work/$bin") bytes"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for run in 1 2 3; do
    api=$(free_port); mqtt=$(free_port)
    "$work/edgeship" hub --listen "127.0.0.1:$api" --mqtt-listen "127.0.0.1:$mqtt" \
        --data-dir "$work/hub-$run" >/dev/null 2>&1 &
    hub=$!
    for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$mqtt") 2>/dev/null && break; sleep 0.1; done
    "$work/edgeship-agent" run --broker "mqtt://127.0.0.1:$mqtt" --device-id "rss-$run" \
        --data-dir "$work/agent-$run" >/dev/null 2>&1 &
    agent=$!
    # Idle means connected, announced and settled: give it a few seconds.
    sleep 3
    echo "agent idle RSS, run $run: $(awk '/VmRSS/ {print $2, $3}' "/proc/$agent/status")"
    kill "$agent" "$hub"
    wait "$agent" "$hub" 2>/dev/null || true
done
