#!/usr/bin/env bash
# The GPU benchmark behind BENCHMARKS.md's GPU table: search (exact second
# order, then first order) and final-training steps at the default configs,
# each followed by our PyTorch reference of the same network on the same GPU.
# Usage: OUT=results_dir bash scripts/gpu_bench.sh
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
J=$OUT/bench.jsonl
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
$PY -m darts_jax.bench --net search --config default --order second --steps 5 --torch --timeout ${T_SECOND:-300} --json "$J"
$PY -m darts_jax.bench --net final --config default --steps 5 --torch --timeout ${T_FINAL:-200} --json "$J"
$PY -m darts_jax.bench --net search --config default --order first --steps 5 --torch --timeout ${T_FIRST:-150} --json "$J"
