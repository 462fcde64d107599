# Developer recipes. Optional: plain `cargo build` / `cargo test --workspace` work without just.
# Install with `cargo install just`.

# List recipes.
default:
    @just --list

# Build everything (debug).
build:
    cargo build --workspace --all-targets

# Run the whole test suite (the README's test command).
test:
    cargo test --workspace

# Format the code.
fmt:
    cargo fmt --all

# Lint exactly as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cd edge-modules && cargo fmt --all -- --check
    cd edge-modules && cargo clippy --release --target wasm32-wasip2 --target-dir ../target/wasm -- -D warnings

# Build the entry modules (WebAssembly components) into target/wasm/wasm32-wasip2/release/.
modules:
    cd edge-modules && cargo build --release --target wasm32-wasip2 --target-dir ../target/wasm

# Exactly what CI runs.
ci:
    .ci/run

# Benchmarks (release build); copy the printed tables into docs/benchmarks.md.
bench:
    cargo build --release --bins
    cargo bench -p edgeship-hub --bench registry
    cargo bench -p edgeship-firmware-tests --bench transfer
    cargo bench -p edgeship-firmware-tests --bench fleet
    cargo bench -p edgeship-firmware-tests --bench containers
    cargo bench -p edgeship-firmware-tests --bench jobs
    cargo bench -p edgeship-firmware-tests --bench security
    cargo bench -p edgeship-runtime --features opencl --bench sgemm
    cargo bench -p edgeship-runtime --features opencl --bench cnn
    python3 scripts/bench/scoring.py
    just modules
    python3 scripts/bench/entry_modules.py

# SGEMM GFLOP/s by size: edgeship's OpenCL kernel (tuned per device) on every OpenCL device
# beside tract on the CPU (apt-get install -y pocl-opencl-icd for a CPU device). On a machine
# with a GPU and no Rust: build with `cargo bench --no-run -p edgeship-runtime --features opencl --bench sgemm`
# and run `scripts/bench/gpu_opencl.sh BINARY OUT_DIR` there (adds cuBLAS through PyTorch).
bench-sgemm:
    cargo bench -p edgeship-runtime --features opencl --bench sgemm

# squeezenet and resnet50 latency at batch 1 and 32: tract on the CPU beside the OpenCL
# runtime on every OpenCL device.
bench-cnn:
    cargo bench -p edgeship-runtime --features opencl --bench cnn

# Container workloads on the Docker engine: apply → Healthy (image delivered, and on the
# device) and the latency the agent's proxy adds to /score.
bench-containers:
    cargo build --release --bins
    cargo bench -p edgeship-firmware-tests --bench containers

# Scoring throughput only: edgeship vs Azure ML's server vs KServe's vs nginx, with wrk
# (apt-get install -y wrk nginx-light; AML_PYTHON=a Python with azureml-inference-server-http
# and onnxruntime; KSERVE_PYTHON=one with kserve and onnxruntime; ONNX_PYTHON=one with onnx,
# numpy and onnxruntime for the CNNs: `just bench-scoring --models squeezenet,resnet50`).
bench-scoring *args:
    cargo build --release --bins
    python3 scripts/bench/scoring.py {{args}}

# Scoring rate of several agent builds taking turns on one hub, for choosing between builds:
# `just bench-ab before=/tmp/agent-old after=target/release/edgeship-agent [--model digits]`.
bench-ab *args:
    cargo build --release --bins
    python3 scripts/bench/agent_ab.py {{args}}

# Release binary sizes and the agent's idle memory (`just footprint --cold` also times a cold build).
footprint *args:
    scripts/footprint.sh {{args}}

# The main job: hub, embedded broker, a local agent and the sample model in one process.
dev:
    cargo run --release --bin edgeship -- dev

# Regenerate the ONNX fixtures (needs Python with scikit-learn, skl2onnx, onnx, onnxruntime).
fixtures:
    python3 scripts/fixtures/make_fixtures.py

# N randomized fault trials with release processes (kill -9 of agent, hub and broker, link
# faults, a full disk, damaged files), each replayable from its printed seed:
# `EDGESHIP_TRIAL_SEEDS=SEED just trials`. Mounting the full-disk tmpfs needs root.
trials N="100":
    cargo build --release --bins
    EDGESHIP_TRIALS={{N}} cargo bench -p edgeship-firmware-tests --bench trials

# The 10-minute scoring soak with a version roll every 30 s, then 1,000 deploy/delete cycles.
soak:
    cargo build --release --bins
    cargo bench -p edgeship-firmware-tests --bench soak
