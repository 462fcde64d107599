#!/usr/bin/env bash
# The OpenCL figures that need a GPU, in one run on a machine that has one. Such machines may
# have no Rust toolchain: build here, copy the binaries into one folder, and run there:
#
#   cargo build --release --bins
#   cargo bench --no-run -p edgeship-runtime --features opencl     # prints the bench binaries
#   mkdir -p gpu-carry && cp target/release/{edgeship,edgeship-agent} gpu-carry/ \
#       && cp target/release/deps/sgemm-<hash> gpu-carry/sgemm \
#       && cp target/release/deps/cnn-<hash> gpu-carry/cnn
#   scripts/bench/gpu_opencl.sh gpu-carry OUT_DIR [sgemm] [cnn] [score] [tests]
#
# sgemm: the GEMM kernel on every OpenCL device beside tract, and cuBLAS through PyTorch;
# cnn: squeezenet and resnet50 in tract on the CPU and on the GPU (EDGESHIP_OPENCL_DEVICE,
# default NVIDIA); score: resnet50 deployed with `runtime: opencl` behind a real hub and
# agent, timed through /score (scripts/bench/opencl_score.py); tests: the OpenCL test
# binaries carried as gpu-carry/test-* (`cargo test --release --no-run -p edgeship-runtime
# --features opencl`, stripped), run on the GPU's platform alone. Default: sgemm cnn score.
set -uo pipefail
bin=$(cd "${1:?usage: gpu_opencl.sh BIN_DIR [OUT_DIR] [sgemm] [cnn] [score]}" && pwd)
out=${2:-${OUT:-/tmp/gpu-opencl}}
shift 2 2>/dev/null || shift $#
parts=${*:-sgemm cnn score}
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

for part in $parts; do
    case $part in
        sgemm)
            EDGESHIP_SGEMM_JSON="$out/sgemm.json" EDGESHIP_SGEMM_CPU_MAX=${EDGESHIP_SGEMM_CPU_MAX:-1024} \
                timeout 300 "$bin/sgemm" 2>&1 | tee "$out/sgemm.txt"
            timeout 120 python3 "$here/cublas_sgemm.py" --json "$out/cublas.json" 2>&1 | tee "$out/cublas.txt"
            ;;
        cnn)
            EDGESHIP_CNN_JSON="$out/cnn.json" EDGESHIP_OPENCL_DEVICE=${EDGESHIP_OPENCL_DEVICE:-NVIDIA} \
                timeout 400 "$bin/cnn" 2>&1 | tee "$out/cnn.txt"
            ;;
        score)
            timeout 400 python3 "$here/opencl_score.py" --bin-dir "$bin" --json "$out/score.json" 2>&1 \
                | tee "$out/score.txt"
            ;;
        tests)
            # The binaries find their fixtures where they were built (CARGO_MANIFEST_DIR).
            repo=$(cd "$here/../.." && pwd)
            built=${EDGESHIP_BUILT_AT:-/work/main}
            if [ ! -e "$built" ]; then
                mkdir -p "$(dirname "$built")" && ln -s "$repo" "$built"
            fi
            # Only the GPU's platform, so that each test's first device is the GPU.
            mkdir -p /tmp/icd-gpu
            grep -lis nvidia "${OCL_ICD_VENDORS:-/etc/OpenCL/vendors}"/*.icd | xargs -r cp -t /tmp/icd-gpu/
            for test in "$bin"/test-*; do
                OCL_ICD_VENDORS=/tmp/icd-gpu EDGESHIP_CI=1 timeout 300 "$test" --test-threads 1 --nocapture 2>&1 \
                    | tee "$out/$(basename "$test").txt" | grep -E "^test |test result|fp16|panicked"
            done
            ;;
    esac
done
