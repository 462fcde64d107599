#!/usr/bin/env bash
# The OpenCL figures that need a GPU, in one run on a machine that has one: the SGEMM benchmark
# (edgeship's tuned OpenCL kernel on every OpenCL device, beside tract on the CPU) and cuBLAS
# through PyTorch on the same GPU. Such machines may have no Rust toolchain: build the
# benchmark here and pass its path:
#
#   cargo bench --no-run -p edgeship-runtime --features opencl --bench sgemm
#   scripts/bench/gpu_opencl.sh target/release/deps/sgemm-<hash> OUT_DIR
set -uo pipefail
bench=${1:?usage: gpu_opencl.sh SGEMM_BENCH_BINARY [OUT_DIR]}
out=${2:-${OUT:-/tmp/gpu-opencl}}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>&1 | tee "$out/machine.txt"
# Where the NVIDIA driver's OpenCL library is present but not registered with the ICD loader
# (containers often mount the driver without /etc/OpenCL/vendors), register it for this run.
if ! clinfo -l 2>/dev/null | grep -qi nvidia; then
    lib=$(find / -xdev -name 'libnvidia-opencl.so*' 2>/dev/null | head -1)
    if [ -n "$lib" ]; then
        mkdir -p /tmp/icd
        [ -d /etc/OpenCL/vendors ] && cp /etc/OpenCL/vendors/*.icd /tmp/icd/ 2>/dev/null
        echo "$lib" > /tmp/icd/nvidia.icd
        export OCL_ICD_VENDORS=/tmp/icd
        echo "registered $lib for this run" | tee -a "$out/machine.txt"
    fi
fi
clinfo -l 2>&1 | tee -a "$out/machine.txt"

EDGESHIP_SGEMM_JSON="$out/sgemm.json" EDGESHIP_SGEMM_CPU_MAX=${EDGESHIP_SGEMM_CPU_MAX:-1024} \
    timeout 300 "$bench" 2>&1 | tee "$out/sgemm.txt"
timeout 120 python3 "$here/cublas_sgemm.py" --json "$out/cublas.json" 2>&1 | tee "$out/cublas.txt"
