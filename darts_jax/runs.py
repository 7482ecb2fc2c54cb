"""What both loops share: the run folder and its logger, and batched evaluation."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import reporting


def open_run(out: str, name: str, resume: bool, config, kind: str):
    """Creates ``out`` (refusing to overwrite a run holding checkpoints unless
    ``resume``) and returns (logger, tensorboard) writing into it."""
    ckpt_dir = os.path.join(out, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir) and not resume:
        raise FileExistsError(
            f"{out} already holds a {kind}; pass --resume to continue it, or choose another --name"
        )
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    logger = reporting.get_logger(os.path.join(out, f"{name}.log"))
    logger.info("Logger is set - training start")
    reporting.log_params(logger, config)
    tb = reporting.TensorBoard(os.path.join(out, "tb"))
    if config.gpus != "0":
        logger.info(
            f"--gpus {config.gpus}: data parallelism is not implemented yet; "
            f"running on one device ({jax.devices()[0]})"
        )
    return logger, tb


def gather(images, labels, idx):
    """One batch from device-resident arrays (jit it: the data never leaves the device)."""
    return images[idx], labels[idx]


def evaluate(eval_fn, state, n: int, batch_size: int, rng, fetch) -> dict:
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
        out = eval_fn(state, images, labels, idx, mask[i], jax.random.fold_in(rng, i))
        sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return {**{k: float(v) / n for k, v in sums.items()}, "steps": steps}


def resident(images_dev, labels_dev, indices=None):
    """``fetch`` for ``evaluate`` over device-resident arrays (optionally a subset)."""

    def fetch(padded):
        for row in padded:
            yield images_dev, labels_dev, row if indices is None else indices[row]

    return fetch


def close_logger(logger: logging.Logger) -> None:
    """Closes the log file (tests open many runs in one process)."""
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
