"""Benchmark of the search and final-training steps, side by side with PyTorch.

    python -m darts_jax.bench --net search --config test --order first,second
    python -m darts_jax.bench --net final --config default --torch
    python -m darts_jax.bench --config default --order second --steps 0   # compile only
    python -m darts_jax.bench --order second --written_out   # passes written out, not scanned
    python -m darts_jax.bench --config default --order second --remat cells   # less memory
    python -m darts_jax.bench --config default --order second --remat hvp   # less memory, inside H v only
    python -m darts_jax.bench --config default --order second --remat none   # no recompute
    python -m darts_jax.bench --config default --order second --batch 16   # the config, another batch
    python -m darts_jax.bench --config default --order second --cells_one_by_one   # no cell loop
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m darts_jax.bench --net search --order first --gpus '0;0,1;0,1,2,3;all'

Each row runs in a fresh child process (so peak memory is that step's alone)
and prints trace+compile seconds (of which "trace s" is JAX's tracing and
lowering, single-threaded Python that a persistent-cache hit still pays),
steady seconds per step, images/s (search:
train + val images per step) and peak memory (device peak on a GPU, RSS on
the CPU). With ``--torch`` every row is followed by the same network in our
PyTorch reference (``darts_jax.interop.torch_bench``, needs torch) and the
ratio of step times. ``--gpus`` sweeps device counts (data parallel, the
batch split over the devices). ``--init_channels``, ``--layers``, ``--batch``
and ``--image_size`` change one size of the named config (0 keeps the
config's), for both frameworks. Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SEARCH_CONFIGS = {
    # name: (C, layers, batch, image size, channels)
    "test": (4, 5, 4, 16, 3),
    "default": (16, 8, 64, 32, 3),
    "quickstart": (8, 5, 32, 8, 1),  # README's quick start on the embedded digits
}
FINAL_CONFIGS = {
    # The aux head needs >= 6x6 features after cell 2 * layers // 3: 32x32 input.
    "test": (4, 5, 8, 32, 3),
    "default": (36, 20, 96, 32, 3),
}
# The flags that change one size of a named config (0 keeps the config's), in
# the configs' order, as train_search.py names them.
SIZE_FLAGS = {
    "init_channels": "channels of the first cell (C)",
    "layers": "cells",
    "batch": "batch",
    "image_size": "image height and width",
}


def network_shape(net: str, config: str, **sizes: int) -> tuple[int, int, int, int, int]:
    """(C, layers, batch, image size, channels) of ``net``'s named ``config``, with
    each nonzero ``sizes`` entry (keys ``SIZE_FLAGS``) in place of the config's."""
    configs = SEARCH_CONFIGS if net == "search" else FINAL_CONFIGS
    if config not in configs:
        raise ValueError(f"--config {config} is not a {net} config: {', '.join(configs)}")
    unknown = set(sizes) - set(SIZE_FLAGS)
    if unknown:
        raise ValueError(f"unknown sizes {sorted(unknown)}; choose from {list(SIZE_FLAGS)}")
    for name, value in sizes.items():
        if value < 0:
            raise ValueError(
                f"--{name} must be a positive size, or 0 for the config's; got {value}"
            )
    *config_sizes, channels = configs[config]
    chosen = (sizes.get(n) or v for n, v in zip(SIZE_FLAGS, config_sizes, strict=True))
    return (*chosen, channels)


def _peak_memory_gb(jax) -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators: the device's own peak
        return stats["peak_bytes_in_use"] / 1e9
    return _host_memory_gb()[0]


def _host_memory_gb() -> tuple[float, float | None]:
    """(peak RSS so far, current RSS) of this process; current is None off Linux."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return peak, None
    return peak, kb / 1e6


def _random_images(rng, batch, size, channels):
    import numpy as np

    return rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8)


def _search_setup(
    network: tuple[int, int, int, int, int],
    order: str,
    n_nodes: int,
    scan_passes: bool = True,
    remat: str = "none",
    scan_cells: bool = True,
):
    import jax
    import numpy as np

    from darts_jax import optim
    from darts_jax.search_model import SearchNetwork, hvp_remat_cells_for, remat_cells_for
    from darts_jax.search_step import Hyper, create_state, make_train_step

    c, layers, batch, size, channels = network
    model = SearchNetwork(
        C=c,
        num_classes=10,
        layers=layers,
        n_nodes=n_nodes,
        remat_cells=remat_cells_for(remat, layers),
        scan_cells=scan_cells,
    )
    schedule = optim.epoch_cosine_schedule(0.025, 0.001, 50, 390)
    w_tx = optim.weight_optimizer(schedule, 0.9, 3e-4, 5.0)
    a_tx = optim.alpha_optimizer(3e-4, 1e-3)
    state = create_state(model, jax.random.PRNGKey(0), (batch, size, size, channels), w_tx, a_tx)
    hyper = Hyper(
        order, scan_passes=scan_passes, hvp_remat_cells=hvp_remat_cells_for(remat, layers)
    )
    step = make_train_step(model, w_tx, a_tx, schedule, _scale, hyper)
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": _random_images(rng, batch, size, channels),
        "val_images": _random_images(rng, batch, size, channels),
        "train_labels": rng.integers(0, 10, (batch,), dtype=np.int32),
        "val_labels": rng.integers(0, 10, (batch,), dtype=np.int32),
    }
    return state, step, arrays, {"C": c, "layers": layers, "batch": batch, "size": size}, 2


def _final_setup(network: tuple[int, int, int, int, int]):
    import jax
    import numpy as np

    from darts_jax import optim
    from darts_jax.final_model import FinalNetwork
    from darts_jax.final_step import FinalHyper, create_state, make_train_step
    from darts_jax.genotypes import DARTS_V2

    c, layers, batch, size, channels = network
    model = FinalNetwork(DARTS_V2, C=c, num_classes=10, layers=layers, auxiliary=True)
    schedule = optim.epoch_cosine_schedule(0.025, 0.0, 600, 521)
    tx = optim.weight_optimizer(schedule, 0.9, 3e-4, 5.0)
    state = create_state(model, jax.random.PRNGKey(0), (1, size, size, channels), tx)
    # steps_per_epoch 1, 10 epochs: drop path is active from the first timed step.
    hyper = FinalHyper(steps_per_epoch=1, epochs=10, drop_path_prob=0.2, aux_weight=0.4)
    step = make_train_step(model, tx, schedule, _scale, hyper)
    rng = np.random.default_rng(0)
    arrays = {
        "images": _random_images(rng, batch, size, channels),
        "labels": rng.integers(0, 10, (batch,), dtype=np.int32),
    }
    return state, step, arrays, {"C": c, "layers": layers, "batch": batch, "size": size}, 1


def _scale(rng, x):
    """Stand-in augmentation (uint8 -> float): the benchmark measures the model."""
    del rng
    return x.astype("float32") / 255.0


def _child(
    net: str,
    config: str,
    network: tuple[int, int, int, int, int],
    order: str,
    steps: int,
    n_nodes: int,
    gpus: str,
    scan_passes: bool,
    remat: str = "none",
    scan_cells: bool = True,
) -> dict:
    from darts_jax import xla_env

    xla_env.configure(program=net)  # as the training scripts do
    import jax

    from darts_jax import parallel, runs

    if net == "search":  # "auto" as train_search.py resolves it (search_loop.run_remat)
        from darts_jax.search_model import resolve_remat

        c, _, batch, size, _ = network
        remat = resolve_remat(remat, parallel.select_devices(gpus), batch, size, c)
    t = time.perf_counter()
    if net == "search":
        state, step, arrays, shape, images_per_sample = _search_setup(
            network, order, n_nodes, scan_passes, remat, scan_cells
        )
    else:
        state, step, arrays, shape, images_per_sample = _final_setup(network)
    init_s = time.perf_counter() - t
    runs.release_init_memory()  # as the training loops do after building the state
    par = parallel.setup(gpus, shape["batch"])
    step = jax.jit(
        step,
        in_shardings=(par.replicated, par.data),
        out_shardings=(par.replicated, par.replicated),
        donate_argnums=0,
    )
    state = parallel.put(state, par.replicated)
    arrays = parallel.put(arrays, par.data)
    t = time.perf_counter()
    lowered = step.lower(state, arrays)
    trace_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    del lowered
    runs.free_compiler_memory(compiled)  # as the training loops do before the first step
    # Host memory before the first step: the compiler's peak so far, and what the
    # process holds once the compiler's memory is handed back (the step adds XLA's plan).
    compile_peak_gb, rss_before_step_gb = _host_memory_gb()
    step_s = None
    if steps:  # --steps 0: compile only (XLA's planned memory still tells whether it fits)
        state, metrics = compiled(state, arrays)
        jax.block_until_ready(metrics)
        t = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, arrays)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - t) / steps
    return {
        "framework": "jax",
        "net": net,
        "config": config,
        "order": order if net == "search" else "-",
        **shape,
        "n_nodes": n_nodes,
        "scan_passes": scan_passes if net == "search" and order != "first" else None,
        "remat": remat if net == "search" else None,
        "scan_cells": scan_cells if net == "search" else None,
        "devices": par.size,
        "init_s": round(init_s, 2),
        "trace_s": round(trace_s, 2),
        "compile_s": round(compile_s, 2),
        "trace_compile_s": round(trace_s + compile_s, 2),
        "step_s": step_s and round(step_s, 4),
        "images_per_s": step_s and round(images_per_sample * shape["batch"] / step_s, 1),
        "peak_mem_gb": round(_peak_memory_gb(jax), 2),
        "planned_gb": _planned_memory_gb(compiled),
        "compile_peak_rss_gb": round(compile_peak_gb, 2),
        "rss_before_step_gb": rss_before_step_gb and round(rss_before_step_gb, 2),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "hugepages": xla_env.HUGEPAGE_TUNABLE in os.environ.get("GLIBC_TUNABLES", ""),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _planned_memory_gb(compiled) -> float | None:
    """The device memory XLA plans for the step (arguments, outputs, temporaries)."""
    from darts_jax import runs

    planned = runs.planned_bytes(compiled)
    return round(planned / 1e9, 2) if planned else None


def _fmt(value, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def _run_child(cmd: list[str], timeout: float) -> dict | str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return f"failed:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from darts_jax.architect import MODES
    from darts_jax.config import REMAT_MODES  # the training flag's choices

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--net", default="search", choices=("search", "final"))
    parser.add_argument(
        "--config",
        default="test",
        choices=sorted(set(SEARCH_CONFIGS) | set(FINAL_CONFIGS)),
        help="search: test, default, quickstart (the README's digits search); final: test, default",
    )
    parser.add_argument(
        "--order", default="first,second", help="search: comma list of first,second,fd"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps after one warm-up step; 0: compile only (trace + compile, planned memory)",
    )
    parser.add_argument(
        "--n_nodes", type=int, default=4, help="search: intermediate nodes per cell"
    )
    parser.add_argument(
        "--written_out",
        action="store_true",
        help="search, second/fd: the step's gradient passes written out instead of scanned",
    )
    parser.add_argument(
        "--remat",
        default="auto",
        choices=REMAT_MODES,
        help="search: 'cells' recomputes the cells before the last reduction cell in the "
        "backward pass, 'hvp' the first stage's cells inside the Hessian-vector product, "
        "'auto' (the default) as train_search.py --remat picks (the bench's default config on "
        "the CPU: 'hvp')",
    )
    parser.add_argument(
        "--cells_one_by_one",
        action="store_true",
        help="search: every cell its own program, instead of one loop per stage's normal cells",
    )
    for name, what in SIZE_FLAGS.items():
        parser.add_argument(
            f"--{name}", type=int, default=0, help=f"the network's {what} (0: the config's)"
        )
    parser.add_argument("--torch", action="store_true", help="also run the PyTorch reference")
    parser.add_argument(
        "--gpus",
        default="0",
        help="comma list of --gpus values to sweep, ';'-separated (e.g. '0;0,1;all')",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per row")
    parser.add_argument("--json", default=None, help="append each row as a JSON line to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = {name: getattr(args, name) for name in SIZE_FLAGS}
    try:
        network = network_shape(args.net, args.config, **sizes)
    except ValueError as e:
        parser.error(str(e))
    orders = args.order.split(",") if args.net == "search" else ["-"]
    if args.net == "search" and not set(orders) <= set(MODES):
        parser.error(f"--order: {args.order!r} is not a comma list of {','.join(MODES)}")
    if args.steps < 0 or args.n_nodes < 1:
        parser.error(f"--steps must be >= 0 and --n_nodes >= 1, got {args.steps}, {args.n_nodes}")
    if args.child:
        row = _child(
            args.net,
            args.config,
            network,
            orders[0],
            args.steps,
            args.n_nodes,
            args.gpus,
            not args.written_out,
            args.remat,
            not args.cells_one_by_one,
        )
        print(json.dumps(row), flush=True)
        return 0
    if any(sizes.values()):
        c, layers, batch, size, _ = network
        print(
            f"{args.net} network: C={c}, {layers} cells, batch {batch}, {size}x{size}", flush=True
        )
    print(
        f"{'framework':9} {'net':6} {'config':8} {'order':6} {'devices':>7} {'compile s':>9} "
        f"{'trace s':>7} {'s/step':>9} {'img/s':>9} {'peak GB':>8} {'XLA GB':>7} {'remat':>6}",
        flush=True,
    )
    for order, gpus in [(o, g) for o in orders for g in args.gpus.split(";")]:
        common = ["--config", args.config, "--steps", str(args.steps)]
        common += [f"--{name}={value}" for name, value in sizes.items() if value]
        jax_cmd = [sys.executable, "-m", "darts_jax.bench", "--child", "--net", args.net]
        jax_cmd += [*common, "--order", order, "--n_nodes", str(args.n_nodes), "--gpus", gpus]
        jax_cmd += ["--written_out"] if args.written_out else []
        jax_cmd += ["--remat", args.remat]
        jax_cmd += ["--cells_one_by_one"] if args.cells_one_by_one else []
        rows = [("jax", _run_child(jax_cmd, args.timeout))]
        if args.torch and gpus == "0" and args.steps:
            torch_cmd = [sys.executable, "-m", "darts_jax.interop.torch_bench", "--net", args.net]
            torch_cmd += common + (["--order", order] if args.net == "search" else [])
            rows.append(("torch", _run_child(torch_cmd, args.timeout)))
        for framework, r in rows:
            n = r.get("devices", 1) if isinstance(r, dict) else gpus
            if isinstance(r, str):
                print(
                    f"{framework:9} {args.net:6} {args.config:8} {order:6} {n:>7} {r}", flush=True
                )
                continue
            compile_s = r.get("trace_compile_s", r.get("warmup_s", float("nan")))
            print(
                f"{framework:9} {args.net:6} {args.config:8} {order:6} {n:>7} {compile_s:>9.1f} "
                f"{_fmt(r.get('trace_s'), '7.1f')} "
                f"{_fmt(r['step_s'], '9.4f')} {_fmt(r['images_per_s'], '9.1f')} "
                f"{r['peak_mem_gb']:>8.2f} {_fmt(r.get('planned_gb'), '7.2f')} "
                f"{r.get('remat') or '-':>6}",  # the mode "auto" resolved to
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
        if len(rows) == 2 and not any(isinstance(r, str) for _, r in rows) and args.steps:
            ratio = rows[0][1]["step_s"] / rows[1][1]["step_s"]
            print(f"{'':9} jax / torch step time: {ratio:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    from darts_jax import xla_env

    xla_env.restart_with_hugepages()  # as the training scripts; the children inherit it
    sys.exit(main())
