#!/usr/bin/env bash
# Prepared accelerator run of the pair benchmark (fits in 8 minutes on one H100/H200).
# On a lent device machine, from the repository root:  bash benchmarks/gpu_run.sh
# Results land in $OUT (the device tool's output folder) or benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || true
python3 -c "import jax; print(jax.devices())" | tee -a "$out/gpu.txt"
for shape in tinyllama-1.1b llama-2-7b; do
  timeout 200 python3 -m benchmarks.pair --shape "$shape" --device gpu --dir /tmp/awm_bench --lean --no-naive --out "$out" \
    2>&1 | tee -a "$out/gpu_log.txt"
done
