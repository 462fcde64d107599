#!/usr/bin/env bash
# Footprint of the release binaries: stripped sizes and the idle RSS (three runs) of the
# default agent (every runtime and serving feature) and of the minimal one
# (`--no-default-features --features tract`), and with --cold the time of a cold
# `cargo build --release --bin edgeship` (what `edgeship dev` costs a first build). Results
# and history: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--cold" ]; then
    rm -rf target/release
    start=$(date +%s)
    cargo build --release --bin edgeship
    echo "cold build of edgeship: $(( $(date +%s) - start )) s"
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# The minimal agent first, so that target/release ends with the workspace's binaries.
cargo build --release -p edgeship-agent --no-default-features --features tract
cp target/release/edgeship-agent "$work/edgeship-agent-minimal"
strip "$work/edgeship-agent-minimal"
echo "edgeship-agent-minimal stripped: $(stat -c %s "$work/edgeship-agent-minimal") bytes"
cargo build --release --bins
for bin in edgeship-agent edgeship; do
    cp "target/release/$bin" "$work/$bin"
    strip "$work/$bin"
    echo "$bin stripped: $(stat -c %s "$work/$bin") bytes"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for agent_bin in edgeship-agent edgeship-agent-minimal; do
for run in 1 2 3; do
    api=$(free_port); mqtt=$(free_port)
    "$work/edgeship" hub --listen "127.0.0.1:$api" --mqtt-listen "127.0.0.1:$mqtt" \
        --data-dir "$work/hub-$agent_bin-$run" >/dev/null 2>&1 &
    hub=$!
    for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$mqtt") 2>/dev/null && break; sleep 0.1; done
    "$work/$agent_bin" run --broker "mqtt://127.0.0.1:$mqtt" --device-id "rss-$run" \
        --data-dir "$work/agent-$agent_bin-$run" >/dev/null 2>&1 &
    agent=$!
    # Idle means connected, announced and settled: give it a few seconds.
    sleep 3
    echo "$agent_bin idle RSS, run $run: $(awk '/VmRSS/ {print $2, $3}' "/proc/$agent/status")"
    kill "$agent" "$hub"
    wait "$agent" "$hub" 2>/dev/null || true
done
done
