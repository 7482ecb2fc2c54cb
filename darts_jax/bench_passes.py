"""Per-pass timing of the search supernet, darts_jax beside PyTorch: where a search step's time goes.

    python -m darts_jax.bench_passes --config default --torch
    python -m darts_jax.bench_passes --config test --passes gradient,hvp --reps 3

A second-order search step (``search_passes``) evaluates three loss gradients
(for the virtual step, on the validation batch at w', for the weight step) and
one exact Hessian-vector product (``architect.alpha_hvp``). pt.darts's second
order evaluates the same three gradients and, for the Hessian term, two
gradients with respect to the alphas alone (its finite difference). This
benchmark times each kind of pass alone, so a slow step can be traced to one:

    forward         the training-mode loss alone
    gradient        the loss gradient with respect to weights and alphas (the body
                    that the step's scanned passes share)
    weight_gradient the loss gradient with respect to the weights alone (what the
                    virtual step and the weight step need)
    alpha_gradient  the loss gradient with respect to the alphas alone
    hvp             darts_jax: H v, forward over reverse (``architect.alpha_hvp``);
                    PyTorch: pt.darts's finite difference of the alpha gradient
                    (two alpha gradients, at w + eps v and w - eps v)

Each (framework, pass) row runs in a fresh child process, so its peak RSS is
its own; darts_jax rows also report the XLA plan (arguments, outputs and
temporaries). "s / pass" is the fastest and slowest of ``--reps`` timed calls
after one warm-up call. Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from darts_jax import bench

PASSES = ("forward", "gradient", "weight_gradient", "alpha_gradient", "hvp")
N_CLASSES = 10


def _timed(call, reps: int) -> tuple[float, list[float]]:
    """Seconds of one warm-up ``call()``, then of each of ``reps`` further calls."""
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times[0], times[1:]


def _jax_row(config: str, kind: str, reps: int) -> dict:
    """One darts_jax pass at ``config``: compile, warm up, time ``reps`` calls."""
    from darts_jax import xla_env

    xla_env.configure()  # as the training scripts do
    import jax
    import jax.numpy as jnp
    import numpy as np

    from darts_jax import architect, runs
    from darts_jax.search_model import SearchNetwork, init_alphas, init_variables
    from darts_jax.search_step import make_loss_fn

    c, layers, batch, size, channels = bench.SEARCH_CONFIGS[config]
    model = SearchNetwork(C=c, num_classes=N_CLASSES, layers=layers)
    alphas = init_alphas(jax.random.PRNGKey(1))
    variables = init_variables(model, jax.random.PRNGKey(0), (batch, size, size, channels), alphas)
    loss_fn = make_loss_fn(model)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, size, size, channels)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, N_CLASSES, (batch,)), jnp.int32)
    args = (variables["params"], alphas, variables["batch_stats"], images, labels)
    if kind == "forward":
        fn = lambda *a: loss_fn(*a)[0]  # noqa: E731
    elif kind == "gradient":
        fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    elif kind == "weight_gradient":
        fn = jax.value_and_grad(loss_fn, argnums=0, has_aux=True)
    elif kind == "alpha_gradient":
        fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
    else:  # hvp, along a weight-shaped direction as the step's v' would be

        def fn(params, alphas, batch_stats, images, labels, direction):
            batch = (images, labels)
            return architect.alpha_hvp(loss_fn, params, alphas, batch_stats, batch, direction)

        direction = jax.tree_util.tree_map(lambda p: 1e-3 * jnp.ones_like(p), args[0])
        args = (*args, direction)
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    runs.free_compiler_memory(compiled)  # as the loops do before the first step
    _, times = _timed(lambda: jax.block_until_ready(compiled(*args)), reps)
    return {
        "framework": "jax",
        "config": config,
        "pass": kind,
        "trace_compile_s": round(compile_s, 2),
        "pass_s_min": round(min(times), 4),
        "pass_s_max": round(max(times), 4),
        "peak_mem_gb": round(bench._peak_memory_gb(jax), 2),
        "planned_gb": bench._planned_memory_gb(compiled),
        "jax": jax.__version__,
    }


def _passes(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in PASSES]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown pass {', '.join(unknown) or repr(text)}; choose from {', '.join(PASSES)}"
        )
    return kinds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="test", choices=sorted(bench.SEARCH_CONFIGS))
    parser.add_argument(
        "--passes", type=_passes, default=list(PASSES), help=f"comma list of {','.join(PASSES)}"
    )
    parser.add_argument("--reps", type=int, default=2, help="timed calls after one warm-up call")
    parser.add_argument("--torch", action="store_true", help="also run the PyTorch reference")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per row")
    parser.add_argument("--json", default=None, help="append each row as a JSON line to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    if args.child:
        print(json.dumps(_jax_row(args.config, args.passes[0], args.reps)), flush=True)
        return 0
    print(
        f"{'framework':9} {'config':8} {'pass':15} {'compile s':>9} {'s / pass':>15} "
        f"{'peak GB':>8} {'XLA GB':>7}",
        flush=True,
    )
    for kind in args.passes:
        for framework in ("jax", "torch") if args.torch else ("jax",):
            # PyTorch's side lives in interop (the core never imports torch).
            module = (
                "darts_jax.bench_passes" if framework == "jax" else "darts_jax.interop.torch_passes"
            )
            cmd = [sys.executable, "-m", module, "--config", args.config, "--passes", kind]
            cmd += ["--reps", str(args.reps)] + (["--child"] if framework == "jax" else [])
            row = bench._run_child(cmd, args.timeout)
            if isinstance(row, str):
                print(f"{framework:9} {args.config:8} {kind:15} {row}", flush=True)
                continue
            times = f"{row['pass_s_min']:.3f}-{row['pass_s_max']:.3f}"
            print(
                f"{framework:9} {args.config:8} {kind:15} "
                f"{bench._fmt(row.get('trace_compile_s'), '9.1f')} {times:>15} "
                f"{row['peak_mem_gb']:>8.2f} {bench._fmt(row.get('planned_gb'), '7.2f')}",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    from darts_jax import xla_env

    xla_env.restart_with_hugepages()  # as the training scripts; the children inherit it
    sys.exit(main())
