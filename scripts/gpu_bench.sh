#!/usr/bin/env bash
# The GPU benchmark behind BENCHMARKS.md's GPU table: first the test-size
# search step (first and second order: does XLA's GPU compiler accept it, and
# how fast does it compile), then search (exact second order, then first
# order) and final-training steps at the default configs, each followed by our
# PyTorch reference of the same network on the same GPU. The default timeouts
# add up to 580 s, for a 10-minute device call.
# Usage: OUT=results_dir bash scripts/gpu_bench.sh
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
J=$OUT/bench.jsonl
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
$PY -m darts_jax.bench --net search --config test --order first,second --steps 3 --timeout ${T_TEST:-120} --json "$J"
$PY -m darts_jax.bench --net search --config default --order second --steps 5 --torch --timeout ${T_SECOND:-250} --json "$J"
$PY -m darts_jax.bench --net final --config default --steps 5 --torch --timeout ${T_FINAL:-120} --json "$J"
$PY -m darts_jax.bench --net search --config default --order first --steps 5 --torch --timeout ${T_FIRST:-90} --json "$J"
