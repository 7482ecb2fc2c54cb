"""What both loops share: the run folder and its logger, and batched evaluation."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import genotypes, parallel, preemption, reporting, xla_env
from darts_jax.config import UsageError
from darts_jax.data import DataMissingError

# What a user can fix: the scripts print the message alone and exit with status 2.
USER_ERRORS = (DataMissingError, FileExistsError, UsageError)


def exit_status(run: Callable, cfg, user_errors: tuple = USER_ERRORS) -> int:
    """``run(cfg)`` for a script's ``main``, its outcome as the exit status: 0 done;
    2 for ``user_errors`` and 1 for a diverged run (the message alone, no
    traceback); 128 + the signal after a stop request's save. With
    ``cfg.distributed``, joins the other processes first (``--distributed``)."""
    try:
        if cfg.distributed:
            parallel.initialize_distributed()  # before any computation
        run(cfg)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except preemption.Stopped as e:  # SIGTERM or Ctrl-C, after saving
        print(f"stopped by {e}", file=sys.stderr)
        return e.exit_code
    except reporting.Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def open_run(out: str, name: str, resume: bool, config, kind: str):
    """Creates ``out`` (refusing to overwrite a run holding checkpoints unless
    ``resume``), sets up the device mesh (--gpus) and returns (logger,
    tensorboard, parallel). Only process 0 writes the log and tensorboard."""
    ckpt_dir = os.path.join(out, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir) and not resume:
        raise FileExistsError(
            f"{out} already holds a {kind}; pass --resume to continue it, or choose another --name"
        )
    par = parallel.setup(config.gpus, config.batch_size)
    main = parallel.is_main_process()
    try:
        if main:
            os.makedirs(os.path.join(out, "plots"), exist_ok=True)
        logger = reporting.get_logger(os.path.join(out, f"{name}.log"), write=main)
    except OSError as e:  # not writable, a file in the way, ...
        raise UsageError(f"cannot write the run folder {out} (--out_dir, --name): {e}") from e
    logger.info("Logger is set - training start")
    reporting.log_params(logger, config)
    tb = reporting.TensorBoard(os.path.join(out, "tb") if main else None)
    devices = ", ".join(str(d) for d in par.mesh.devices.flat)
    logger.info(
        f"{par.size} device(s) over {jax.process_count()} process(es), batch "
        f"{config.batch_size} split {config.batch_size // par.size} per device: {devices}"
    )
    return logger, tb, par


# Programs planning at least this much memory drop JAX's caches after compiling.
DROP_CACHES_FROM_BYTES = 1 << 30


def planned_bytes(compiled) -> int:
    """The memory XLA plans for ``compiled`` (arguments, outputs, temporaries);
    0 where the backend does not say."""
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return int(total - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return 0


def free_compiler_memory(compiled=None) -> None:
    """Hands the compiler's freed heap back to the system
    (``xla_env.release_freed_memory``) and drops JAX's in-memory caches (traces,
    lowerings, compiled programs not held elsewhere): call it between a big
    compile and the first execution (``compile_on_first_call``).

    The caches stay when ``compiled``, the program just compiled, plans less than
    ``DROP_CACHES_FROM_BYTES``: the compiler's own peak then exceeds the step's
    buffers, so the caches cost no peak memory, while dropping them would make
    JAX compile each small helper program again (about 150 in a tiny search;
    BENCHMARKS.md, session 22)."""
    if compiled is None or planned_bytes(compiled) >= DROP_CACHES_FROM_BYTES:
        jax.clear_caches()
    gc.collect()
    xla_env.release_freed_memory()


_init_memory_released = False


def release_init_memory() -> None:
    """Drops JAX's in-memory caches and hands the freed heap back after the first
    training state of this process is built, before its step is traced and
    compiled; later calls do nothing.

    Building the variables eagerly runs the network's forward pass op by op at
    batch 2 (flax's ``init``), and each op and shape compiles a small program
    (about 2 MB each, about 75 at the test config with the optimizers' zeros)
    that JAX keeps. Dropped, they no longer sit under the compiler's peak: the
    test config's second-order step peaked at 1.83-1.88 GB against 1.95-1.96
    GB (BENCHMARKS.md, session 28). In a script's run nothing else is compiled
    yet at that point, so nothing compiles twice; a process that builds many
    states (the tests, a notebook) keeps its caches after the first, which it
    would otherwise recompile every time (dropped after every state, the
    end-to-end test files compiled 1,017 programs instead of 451)."""
    global _init_memory_released
    if _init_memory_released:
        return
    _init_memory_released = True
    free_compiler_memory()


def compile_on_first_call(jitted, logger: logging.Logger, what: str) -> Callable:
    """``jitted`` (a ``jax.jit`` function) compiled ahead of time for the arguments
    of its first call, which it then runs, as every later call.

    Between compiling and the first execution the compiler's freed memory goes
    back to the system and, for a step planning 1 GiB or more, JAX's in-memory
    caches are dropped (the step's trace and lowering, needed no more; other
    functions trace again when next called, and the persistent compilation
    cache still serves their programs; ``free_compiler_memory``), so the
    step's buffers do not come on top of them: at the default search config, second order, peak RSS
    16.0 -> 10.05 GB with the release and 9.81 GB with the caches dropped too
    (BENCHMARKS.md, session 11). The compile time is logged. Later calls must
    pass arguments of the same shapes and shardings (a training loop's state
    and batches do).
    """
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            t = time.perf_counter()
            compiled = jitted.lower(*args).compile()
            free_compiler_memory(compiled)
            logger.info(f"Compiled the {what} in {time.perf_counter() - t:.1f} s")
        return compiled(*args)

    return call


def epoch_steps(n_images: int, batch_size: int, steps_per_epoch: int, images: str) -> int:
    """Steps per epoch: full batches of ``n_images`` (the last partial batch is
    dropped), capped at ``steps_per_epoch`` if > 0. A batch larger than the split
    is a ``UsageError`` naming it (``images``, e.g. "weight-split images")."""
    steps = n_images // batch_size
    if steps < 1:
        raise UsageError(
            f"--batch_size {batch_size} exceeds the {n_images} {images}; use at most {n_images}"
        )
    return min(steps, steps_per_epoch) if steps_per_epoch else steps


# Flags that do not change what a resumed run computes: where files are, devices,
# memory (--remat recomputes the same values), reporting, and the starting
# points that a restored checkpoint replaces.
UNTRACKED_FLAGS = frozenset(
    {"name", "resume", "checkpoint_minutes", "progress", "print_freq", "out_dir", "data_dir"}
    | {"workers", "gpus", "distributed", "remat", "eval_only", "checkpoint", "init_from"}
    | {"init_layout", "torch_checkpoint", "torch_layout"}
)


def run_flags(cfg) -> dict:
    """The flags that decide what a run computes, for its checkpoints' metadata.
    A ``--genotype`` is kept as its text, whether it was given as a name, a file
    or text (so that the same genotype given another way is no change)."""
    flags = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNTRACKED_FLAGS}
    if flags.get("genotype") is not None:
        flags["genotype"] = genotypes.to_str(genotypes.resolve(flags["genotype"]))
    return flags


def changed_flags(meta: dict, now: dict) -> list[str]:
    """``--flag saved -> now`` for each flag (``now``: this run's ``run_flags``) a
    resumed run sets otherwise than the run that saved ``meta`` (nothing for
    checkpoints saved without flags)."""
    saved = meta.get("flags") or {}
    return [f"--{k} {saved[k]} -> {now[k]}" for k in now if k in saved and saved[k] != now[k]]


def log_resumed(logger, meta: dict, flags: dict, where: str, epoch: int, first_step: int) -> None:
    """The resume's log line, and a warning naming every flag it changed (``flags``:
    this run's ``run_flags``)."""
    logger.info(
        f"Resumed from {where} in epoch {epoch + 1} at step {first_step}"
        if first_step
        else f"Resumed from {where} after epoch {epoch}"
    )
    changes = changed_flags(meta, flags)
    if changes:
        logger.warning("The resumed run's flags differ from the saved run's: " + ", ".join(changes))


def resume_point(meta: dict, steps: int) -> tuple[int, int, dict | None]:
    """(epoch, first step, train totals so far) at which a checkpoint's run goes on.
    Epoch-end checkpoints continue with the next epoch; mid-epoch ones (``steps_done``)
    within their epoch, which must have the same number of steps."""
    if "steps_done" not in meta:
        return meta["epoch"] + 1, 0, None
    if meta["steps_per_epoch"] != steps:
        raise UsageError(
            f"the checkpoint was saved after step {meta['steps_done']} of an epoch of "
            f"{meta['steps_per_epoch']} steps, but this run's epochs have {steps} steps: "
            "resume with the --batch_size and --steps_per_epoch that wrote it"
        )
    return meta["epoch"], meta["steps_done"], meta["train_totals"]


def run_steps(train_step, state, batches, first: int, meter, print_freq: int, triggers, save):
    """Runs an epoch's steps from step ``first`` on (``batches``: those steps'
    batches, in order) and returns the state. When ``triggers``
    (``preemption.SaveTriggers``) asks for it after a step, the metrics so far
    go into ``meter``'s totals and ``save(state, steps_done)`` saves the run;
    after a save on a stop request, raises ``preemption.Stopped``."""
    i = first - 1
    for i, batch in enumerate(batches, start=first):
        state, metrics = train_step(state, batch)
        printed = meter.add(i, metrics, print_freq) is not None
        action = triggers.check(meter.epoch * meter.steps + i + 1, printed)
        if action is None:
            continue
        meter.flush()
        save(state, i + 1)
        triggers.saved()
        if action == preemption.STOP:
            raise triggers.stopped(f"after step {i + 1}/{meter.steps} of epoch {meter.epoch + 1}")
    if i + 1 != meter.steps:
        raise RuntimeError(f"epoch {meter.epoch + 1} ran to step {i + 1} of {meter.steps}")
    return state


def gather(images, labels, idx):
    """One batch from device-resident arrays (jit it: the data never leaves the device)."""
    return images[idx], labels[idx]


def jit_gather(par: parallel.Parallel):
    """``gather`` jitted so that the batch comes out split over the mesh."""
    return jax.jit(gather, out_shardings=(par.data, par.data))


def put_indices(par: parallel.Parallel, idx):
    """A batch's indices, replicated (every device gathers its own rows)."""
    return parallel.put(np.asarray(idx, np.int32), par.replicated)


def evaluate(eval_fn, state, n: int, batch_size: int, rng, fetch, par) -> dict:
    """Mean loss, top-1, top-5 over ``n`` examples (and the batch count 'steps'), in
    fixed-size batches: the last one is padded and its padding masked out.

    ``fetch(padded_indices (steps, batch))`` yields, per step, the arguments
    ``(images_all, labels_all, idx)`` of ``eval_fn(state, images_all, labels_all,
    idx, mask, rng) -> sums`` (jitted): device-resident arrays and the batch's
    indices into them, or one host-read batch and ``arange(batch)``.
    """
    steps = -(-n // batch_size)
    padded = np.resize(np.arange(n, dtype=np.int32), steps * batch_size).reshape(steps, -1)
    mask = (np.arange(steps * batch_size) < n).reshape(steps, batch_size).astype(np.float32)
    sums = None
    for i, (images, labels, idx) in enumerate(fetch(padded)):
        row_mask, row_rng = parallel.put((mask[i], jax.random.fold_in(rng, i)), par.replicated)
        out = eval_fn(state, images, labels, idx, row_mask, row_rng)
        sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
    sums = parallel.to_host(sums)
    return {**{k: float(v) / n for k, v in sums.items()}, "steps": steps}


def resident(par: parallel.Parallel, images_dev, labels_dev, indices=None):
    """``fetch`` for ``evaluate`` over device-resident arrays (optionally a subset)."""

    def fetch(padded):
        for row in padded:
            yield images_dev, labels_dev, put_indices(par, row if indices is None else indices[row])

    return fetch


def jit_eval(fn, par: parallel.Parallel):
    """An evaluation ``fn(state, images, labels, idx, mask, rng) -> sums`` jitted on
    the mesh: the gathered batch is split over the devices, the sums replicated."""

    def sharded(state, images_all, labels_all, idx, mask, rng):
        idx = jax.lax.with_sharding_constraint(idx, par.data)
        mask = jax.lax.with_sharding_constraint(mask, par.data)
        return fn(state, images_all, labels_all, idx, mask, rng)

    return jax.jit(sharded, out_shardings=par.replicated)


def close_logger(logger: logging.Logger) -> None:
    """Closes the log file (tests open many runs in one process)."""
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
