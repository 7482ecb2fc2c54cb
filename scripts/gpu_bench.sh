#!/usr/bin/env bash
# The GPU benchmark and checks behind BENCHMARKS.md's GPU section, sized for one
# 10-minute device call.
#
# Phase 1 compiles every step at once, each in its own process (--steps 0),
# into one persistent compilation cache: the search step at the test config
# (first and second order), the search step at the default config (exact
# second order and first order), and the final-training step (test and
# default); with VARIANTS=1 also the default second-order step with XLA's
# autotuning off and with the gradient passes written out (session 12 measured
# both: neither helps). GPU compiles are mostly host work, so running them
# side by side costs little per compile and a lot less wall time.
# Beside them (CHECKS=1, the default) run the checks that need a GPU: the
# float64 parity report against the PyTorch reference with JAX on the GPU
# (parity.txt, exit status checked), and README's quick-start search on the
# GPU (quickstart.txt, with its pt.darts log and genotype.txt).
# Phase 2 then runs the steps one at a time on a quiet GPU, loading the
# compiled programs from the cache, each followed by our PyTorch reference of
# the same network (--torch). Rows whose compile did not finish in phase 1 are
# skipped rather than compiled again.
# Phase 3, if time is left: the default second-order step compiled alone, in
# a fresh cache (its compile time without seven others beside it).
# Usage: OUT=results_dir bash scripts/gpu_bench.sh   (BUDGET_S=570 by default)
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
C=$OUT/compile.jsonl  # phase 1 rows: trace + compile seconds, XLA's planned memory
S=$OUT/steps.jsonl    # phase 2 rows: seconds per step, peak memory, PyTorch rows
PY=${PYTHON:-python3}
B="$PY -m darts_jax.bench"
DEADLINE=$(($(date +%s) + ${BUDGET_S:-570}))
left() { echo $((DEADLINE - $(date +%s))); }
AUTOTUNE_OFF="--xla_gpu_autotune_level=0"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

echo "== phase 1: compile side by side (cap ${T_COMPILE:=240} s each)"
t0=$(date +%s)
$B --net search --config test --order first --steps 0 --timeout "$T_COMPILE" --json "$C" &
$B --net search --config test --order second --steps 0 --timeout "$T_COMPILE" --json "$C" &
$B --net search --config default --order second --steps 0 --timeout "$T_COMPILE" --json "$C" &
$B --net search --config default --order first --steps 0 --timeout "$T_COMPILE" --json "$C" &
$B --net final --config default --steps 0 --timeout "$T_COMPILE" --json "$C" &
$B --net final --config test --steps 0 --timeout "$T_COMPILE" --json "$C" &
if [[ ${VARIANTS:-0} == 1 ]]; then
    XLA_FLAGS="${XLA_FLAGS:-} $AUTOTUNE_OFF" \
        $B --net search --config default --order second --steps 0 --timeout "$T_COMPILE" --json "$C" &
    $B --net search --config default --order second --written_out --steps 0 --timeout "$T_COMPILE" --json "$C" &
fi
if [[ ${CHECKS:-1} == 1 ]]; then
    (
        timeout "$T_COMPILE" $PY -m darts_jax.interop.parity --config tiny --order 2 >"$OUT/parity.txt" 2>&1
        echo "parity exit status $?" >>"$OUT/parity.txt"
    ) &
    (
        Q=$(mktemp -d) q0=$(date +%s)
        timeout "$T_COMPILE" $PY train_search.py --name digits --dataset digits \
            --init_channels 8 --layers 5 --batch_size 32 --epochs 3 --out_dir "$Q" --progress false \
            >"$OUT/quickstart.txt" 2>&1
        echo "quick start exit status $? after $(($(date +%s) - q0)) s" >>"$OUT/quickstart.txt"
        cp "$Q/digits/digits.log" "$OUT/quickstart_digits.log" 2>/dev/null
        cp "$Q/digits/genotype.txt" "$OUT/quickstart_genotype.txt" 2>/dev/null
        ls -R "$Q/digits" >>"$OUT/quickstart.txt" 2>&1
    ) &
fi
wait
echo "phase 1 took $(($(date +%s) - t0)) s"
for f in parity quickstart; do [[ -f $OUT/$f.txt ]] && tail -n 3 "$OUT/$f.txt"; done

# compiled NET CONFIG ORDER [off|written]: did phase 1 compile this row (with
# autotuning off, or with the passes written out)?
compiled() {
    $PY - "$C" "$@" <<'EOF'
import json, os, sys
path, net, config, order, *variant = sys.argv[1:]
rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
ok = any(r["net"] == net and r["config"] == config and r["order"] == order
         and ("autotune_level=0" in r["xla_flags"]) == (variant == ["off"])
         and (r.get("scan_passes") is False) == (variant == ["written"]) for r in rows)
sys.exit(0 if ok else 1)
EOF
}

# step NET CONFIG ORDER CAP [extra bench args]: time the steps if compiled, within the budget
step() {
    local net=$1 config=$2 order=$3 cap=$4
    shift 4
    local t=$(($(left) - 10))
    ((t > cap)) && t=$cap
    if ((t < 30)); then echo "skipped $net $config $order: out of time"; return; fi
    local args=(--net "$net" --config "$config" --timeout "$t" --json "$S" "$@")
    [[ $net == search ]] && args+=(--order "$order")
    local variant=
    [[ " $* " == *" --written_out "* ]] && variant=written
    if compiled "$net" "$config" "$order" $variant; then
        $B "${args[@]}"
    elif [[ $net/$config/$order == search/default/second ]] &&
        compiled "$net" "$config" "$order" off; then
        echo "(autotuned compile did not finish: timing the $AUTOTUNE_OFF program)"
        XLA_FLAGS="${XLA_FLAGS:-} $AUTOTUNE_OFF" $B "${args[@]}"
    else
        echo "skipped $net $config $order: not compiled in phase 1"
    fi
}

echo "== phase 2: steps one at a time, programs from the cache ($(left) s left)"
step search default second 150 --steps 5 --torch
step final default - 90 --steps 10 --torch
step search default first 90 --steps 5 --torch
step search test first 40 --steps 10
step search test second 60 --steps 10
step final test - 40 --steps 10
[[ ${VARIANTS:-0} == 1 ]] && step search default second 60 --steps 5 --written_out
if (($(left) > 200)); then
    echo "== phase 3: the default second-order step compiled alone, fresh cache ($(left) s left)"
    JAX_COMPILATION_CACHE_DIR=$(mktemp -d) \
        $B --net search --config default --order second --steps 0 --timeout $(($(left) - 10)) --json "$C"
else
    echo "skipped phase 3: $(left) s left"
fi
echo "done, $(left) s of the budget left"
