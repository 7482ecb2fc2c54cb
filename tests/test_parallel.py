"""Data parallelism over 8 CPU devices (conftest): same results on 1 and 8 devices,
--gpus parsing and its errors, and a two-process jax.distributed run."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_flags import SEARCH_TINY
from tiny_search import step_case

import train_search
from darts_jax import genotypes as G
from darts_jax import optim, parallel
from darts_jax.final_model import FinalNetwork
from darts_jax.final_step import FinalHyper
from darts_jax.final_step import create_state as final_state
from darts_jax.final_step import make_train_step as final_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = lambda rng, x: x.astype(jnp.float32) / 255.0  # noqa: E731


def _max_diff(a, b):
    """Largest difference between two state pytrees, relative to each leaf's scale."""
    diffs = jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-3)), a, b
    )
    return max(jax.tree_util.tree_leaves(diffs))


def _run(step_fn, state, batch, gpus):
    par = parallel.setup(gpus, 8)
    step = jax.jit(
        step_fn,
        in_shardings=(par.replicated, par.data),
        out_shardings=(par.replicated, par.replicated),
    )
    state, metrics = step(parallel.put(state, par.replicated), parallel.put(batch, par.data))
    return parallel.to_host((state, metrics))


def test_exact_second_order_step_on_8_devices_in_float64():
    """The sharded search step equals the one-device step (first order through
    the loop on several devices: the two-process test below). One reduction
    cell keeps the two compiles short; BN statistics, gradients and both
    optimizers all cross the devices in it."""
    with jax.enable_x64(True):
        step, state, batch = step_case("second", jnp.float64, layers=1)
        one, eight = _run(step, state, batch, "0"), _run(step, state, batch, "all")
    assert _max_diff(eight, one) < 1e-10


def test_final_step_is_the_same_on_1_and_8_devices():
    model = FinalNetwork(G.DARTS_V2, C=4, num_classes=10, layers=3, auxiliary=True)
    schedule = optim.epoch_cosine_schedule(0.025, 0.0, 4, 2)
    tx = optim.weight_optimizer(schedule, 0.9, 3e-4, 5.0)
    state = final_state(model, jax.random.PRNGKey(0), (1, 24, 24, 3), tx)
    # Drop path off: its masks are drawn per global sample, the same either way,
    # but keeping it off makes a failure easy to read.
    step = final_train_step(model, tx, schedule, SCALE, FinalHyper(2, 4, 0.0, 0.4))
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8),
        "labels": rng.integers(0, 10, 8).astype(np.int32),
    }
    one, eight = _run(step, state, batch, "0"), _run(step, state, batch, "all")
    assert _max_diff(eight, one) < 1e-4


@pytest.mark.parametrize(
    "gpus, batch, message",
    [
        ("a,b", 8, "comma list"),
        ("0,0", 8, "twice"),
        ("9", 8, "no device 9"),
        ("all", 6, "does not divide over the 8 devices"),
    ],
)
def test_gpus_errors(gpus, batch, message):
    with pytest.raises(ValueError, match=message):
        parallel.setup(gpus, batch)


def test_gpus_selects_devices():
    assert parallel.setup("0", 8).size == 1
    assert parallel.setup("1,3", 8).mesh.devices.tolist() == [jax.devices()[1], jax.devices()[3]]
    assert parallel.setup("all", 8).size == 8


# tests/test_train_search.py's first run, so that one-device run's compiles are cached.
TINY = [*SEARCH_TINY, "--epochs", "1"]


def test_bad_gpus_exits_2(tmp_path, capsys):
    args = ["--name", "x", "--out_dir", str(tmp_path), *TINY, "--gpus", "0,9"]
    assert train_search.main(args) == 2
    assert "no device 9" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_process_env() -> dict:
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}",
        "JAX_NUM_PROCESSES": "2",
        "PYTHONPATH": REPO,
    }


# First order and one (reduction) cell keep the compiles short; the step's
# equality in exact second order is checked above.
TWO_PROCESS_ARGS = [
    sys.executable,
    os.path.join(REPO, "train_search.py"),
    *TINY,
    "--layers",
    "1",
    "--alpha_grad",
    "first",
    "--gpus",
    "all",
]


def _start_two_processes(args: list[str], env: dict) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [*args, "--distributed"],
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def _finish(procs: list[subprocess.Popen]) -> tuple[list[int], str]:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], outputs[0][-3000:] + outputs[1][-3000:]


def test_two_processes_on_localhost_match_one_process(tmp_path):
    """jax.distributed over two local processes of 2 CPU devices each runs the
    same search as one process on one device: the loop, the data sharded over
    processes and devices, the logging and the genotype."""
    env = _two_process_env()
    args = TWO_PROCESS_ARGS
    codes, outputs = _finish(
        _start_two_processes([*args, "--name", "dist", "--out_dir", str(tmp_path)], env)
    )
    assert codes == [0, 0], outputs
    single = [*args[:-2], "--gpus", "0", "--name", "single", "--out_dir", str(tmp_path)]
    subprocess.run(single, env=env, check=True, capture_output=True)
    log = open(tmp_path / "dist" / "dist.log").read()
    assert "4 device(s) over 2 process(es), batch 8 split 2 per device" in log
    assert (
        open(tmp_path / "dist" / "genotype.txt").read()
        == open(tmp_path / "single" / "genotype.txt").read()
    )
    last = lambda text: [line for line in text.splitlines() if "Final best Prec@1" in line][-1]  # noqa: E731
    single_log = open(tmp_path / "single" / "single.log").read()
    assert last(log).split("|")[1] == last(single_log).split("|")[1]


def test_sigterm_on_one_of_two_processes_saves_both_at_one_step_and_resumes(tmp_path):
    """A scheduler stopping one host of two: JAX's preemption sync point turns the
    SIGTERM into a save after the same step on both processes, both exit with
    143, and --resume on both goes on at the next step and finishes the run."""
    env = _two_process_env()
    steps = 16  # a long enough epoch for the signal to land inside it
    # (the later --steps_per_epoch and --print_freq override TINY's)
    args = [*TWO_PROCESS_ARGS, "--steps_per_epoch", str(steps), "--print_freq", "1"]
    args += ["--name", "stop", "--out_dir", str(tmp_path)]
    log_path = tmp_path / "stop" / "stop.log"
    procs = _start_two_processes(args, env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if log_path.exists() and f"Step 001/{steps - 1:03d}" in log_path.read_text():
            procs[1].send_signal(signal.SIGTERM)  # the host that writes no log
            break
        time.sleep(0.05)
    codes, outputs = _finish(procs)
    assert codes == [128 + signal.SIGTERM] * 2, outputs
    saved = re.findall(
        rf"Saved a checkpoint after step (\d+)/{steps} of epoch 1", log_path.read_text()
    )
    assert len(saved) == 1 and 2 <= int(saved[0]) < steps, outputs
    done = int(saved[0])

    codes, outputs = _finish(_start_two_processes([*args, "--resume"], env))
    assert codes == [0, 0], outputs
    log = log_path.read_text()
    assert f"Resumed from {tmp_path / 'stop' / 'checkpoints'} in epoch 1 at step {done}" in log
    for i in range(steps):  # every step logged once: none lost, none run twice
        assert log.count(f"Step {i:03d}/{steps - 1:03d}") == 1, i
    assert os.path.exists(tmp_path / "stop" / "genotype.txt")
