"""Benchmark of the search step: python -m darts_jax.bench --config test --order first,second

For each order it runs a fresh child process (so peak memory is that step's
alone) and prints trace+compile seconds, steady seconds per step, images/s
(train + val images per step) and peak RSS. Not a test: figures go to README.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    # name: (C, layers, batch, image size, channels)
    "test": (4, 5, 4, 16, 3),
    "default": (16, 8, 64, 32, 3),
}


def _child(config: str, order: str, steps: int, n_nodes: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from darts_jax import optim
    from darts_jax.search_model import SearchNetwork
    from darts_jax.search_step import Hyper, create_state, make_train_step

    c, layers, batch, size, channels = CONFIGS[config]
    model = SearchNetwork(C=c, num_classes=10, layers=layers, n_nodes=n_nodes)
    schedule = optim.epoch_cosine_schedule(0.025, 0.001, 50, 390)
    w_tx = optim.weight_optimizer(schedule, 0.9, 3e-4, 5.0)
    a_tx = optim.alpha_optimizer(3e-4, 1e-3)
    t = time.perf_counter()
    state = create_state(model, jax.random.PRNGKey(0), (batch, size, size, channels), w_tx, a_tx)
    init_s = time.perf_counter() - t
    augment = lambda rng, x: x.astype(jnp.float32) / 255.0  # noqa: E731  (model cost only)
    step = jax.jit(
        make_train_step(model, w_tx, a_tx, schedule, augment, Hyper(order)), donate_argnums=0
    )
    rng = np.random.default_rng(0)
    batch_arrays = {
        "train_images": rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8),
        "val_images": rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, (batch,), dtype=np.int32),
        "val_labels": rng.integers(0, 10, (batch,), dtype=np.int32),
    }
    batch_arrays = jax.device_put(batch_arrays)
    t = time.perf_counter()
    lowered = step.lower(state, batch_arrays)
    trace_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    state, metrics = compiled(state, batch_arrays)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch_arrays)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t) / steps
    return {
        "config": config,
        "order": order,
        "C": c,
        "layers": layers,
        "n_nodes": n_nodes,
        "batch": batch,
        "size": size,
        "init_s": round(init_s, 2),
        "trace_s": round(trace_s, 2),
        "compile_s": round(compile_s, 2),
        "trace_compile_s": round(trace_s + compile_s, 2),
        "step_s": round(step_s, 4),
        "images_per_s": round(2 * batch / step_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="test", choices=sorted(CONFIGS))
    parser.add_argument("--order", default="first,second", help="comma list of first,second,fd")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--n_nodes", type=int, default=4, help="intermediate nodes per cell")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    orders = args.order.split(",")
    if args.child:
        print(json.dumps(_child(args.config, orders[0], args.steps, args.n_nodes)), flush=True)
        return 0
    header = f"{'config':8} {'order':6} {'trace+compile s':>15} {'s/step':>8} {'img/s':>8} {'peak GB':>8}"
    print(header)
    for order in orders:
        cmd = [
            sys.executable,
            "-m",
            "darts_jax.bench",
            "--child",
            "--config",
            args.config,
            "--order",
            order,
            "--steps",
            str(args.steps),
            "--n_nodes",
            str(args.n_nodes),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{args.config:8} {order:6} failed:\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{r['config']:8} {r['order']:6} {r['trace_compile_s']:>15.1f} {r['step_s']:>8.3f} "
            f"{r['images_per_s']:>8.1f} {r['peak_rss_gb']:>8.2f}   {json.dumps(r)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
