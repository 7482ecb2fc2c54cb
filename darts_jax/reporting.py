"""pt.darts-style log lines, tensorboard scalars and the alpha printout."""

from __future__ import annotations

import logging
import os

import numpy as np

from darts_jax.genotypes import PRIMITIVES


def get_logger(path: str, name: str = "darts_jax") -> logging.Logger:
    """pt.darts's logger: '%(asctime)s | %(message)s' to the file and to stdout."""
    logger = logging.getLogger(f"{name}:{os.path.abspath(path)}")
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s | %(message)s", datefmt="%m/%d %I:%M:%S %p")
    for handler in (logging.FileHandler(path), logging.StreamHandler()):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def log_params(logger: logging.Logger, config) -> None:
    """Logs every flag as NAME=value, like pt.darts's print_params."""
    logger.info("")
    logger.info("Parameters:")
    for key, value in sorted(vars(config).items()):
        logger.info(f"{key.upper()}={value}")
    logger.info("")


class TensorBoard:
    """tensorboardX scalars; a no-op writer when disabled (non-zero hosts, tests)."""

    def __init__(self, logdir: str | None):
        self._writer = None
        if logdir is not None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=logdir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def step_line(kind: str, epoch: int, epochs: int, step: int, steps: int, loss, top1, top5) -> str:
    return (
        f"{kind}: [{epoch + 1:2d}/{epochs}] Step {step:03d}/{steps - 1:03d} Loss {loss:.3f} "
        f"Prec@(1,5) ({top1:.1%}, {top5:.1%})"
    )


def final_line(kind: str, epoch: int, epochs: int, top1: float) -> str:
    return f"{kind}: [{epoch + 1:2d}/{epochs}] Final Prec@1 {top1:.4%}"


def log_alphas(logger: logging.Logger, alphas: dict, n_nodes: int) -> None:
    """Softmaxed alphas per node, as pt.darts prints them each epoch."""
    from darts_jax.genotypes import edge_offsets

    logger.info("####### ALPHA #######")
    with np.printoptions(precision=4, suppress=True, linewidth=120):
        for kind in ("normal", "reduce"):
            logger.info(f"# Alpha - {kind}")
            a = np.asarray(alphas[kind], np.float64)
            w = np.exp(a - a.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            for i, start in enumerate(edge_offsets(n_nodes)):
                logger.info(str(w[start : start + i + 2]))
    logger.info(f"# columns: {', '.join(PRIMITIVES)}")
    logger.info("#####################")
