"""pt.darts-style log lines, tensorboard scalars and the alpha printout."""

from __future__ import annotations

import logging
import math
import os
import sys

import numpy as np
from tqdm import tqdm

from darts_jax.genotypes import PRIMITIVES
from darts_jax.parallel import to_host


def get_logger(path: str, name: str = "darts_jax", write: bool = True) -> logging.Logger:
    """pt.darts's logger: '%(asctime)s | %(message)s' to the file and to stdout
    (nowhere when ``write`` is False: processes other than 0)."""
    logger = logging.getLogger(f"{name}:{os.path.abspath(path)}")
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s | %(message)s", datefmt="%m/%d %I:%M:%S %p")
    handlers = (logging.FileHandler(path), logging.StreamHandler()) if write else ()
    if not write:
        logger.addHandler(logging.NullHandler())
    for handler in handlers:
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


def step_line(
    kind: str, epoch: int, epochs: int, step: int, steps: int, loss, top1, top5, width: int = 2
) -> str:
    """pt.darts's progress line; its search prints the epoch in width 2, augment.py in 3."""
    return (
        f"{kind}: [{epoch + 1:{width}d}/{epochs}] Step {step:03d}/{steps - 1:03d} Loss {loss:.3f} "
        f"Prec@(1,5) ({top1:.1%}, {top5:.1%})"
    )


def final_line(kind: str, epoch: int, epochs: int, top1: float, width: int = 2) -> str:
    return f"{kind}: [{epoch + 1:{width}d}/{epochs}] Final Prec@1 {top1:.4%}"


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the loops stop rather than go on
    with broken weights (nothing after it is saved)."""


class EpochMeter:
    """One epoch's training metrics. Step metrics stay on the device between print
    points; at each print point they are fetched (the loop's only host sync),
    averaged, logged as pt.darts's Train line and written to tensorboard."""

    KEYS = ("loss", "top1", "top5")

    def __init__(
        self,
        logger,
        tb,
        epoch: int,
        epochs: int,
        steps: int,
        width: int = 2,
        progress: bool = True,
        desc: str = "train",
        done: int = 0,
        totals: dict | None = None,
    ):
        """``done`` and ``totals``: the steps already run in this epoch and their
        summed metrics (a run resumed inside the epoch)."""
        self.logger, self.tb = logger, tb
        self.epoch, self.epochs, self.steps, self.width = epoch, epochs, steps, width
        self.totals = {k: float((totals or {}).get(k, 0.0)) for k in self.KEYS}
        self.pending: list = []
        self.done = done
        self.bar = tqdm(
            total=steps,
            initial=done,
            desc=f"{desc} {epoch + 1}/{epochs}",
            disable=not progress,
            file=sys.stderr,
            leave=False,
        )

    def add(self, i: int, metrics: dict, print_freq: int) -> dict | None:
        """Records step ``i``; returns the running averages at print points, else None."""
        self.pending.append(metrics)
        self.bar.update(1)
        if i % print_freq and i != self.steps - 1:
            return None
        self.flush()
        avg = self.averages()
        self.logger.info(
            step_line(
                "Train", self.epoch, self.epochs, i, self.steps, *avg.values(), width=self.width
            )
        )
        self.bar.set_postfix(loss=f"{avg['loss']:.3f}", top1=f"{avg['top1']:.1%}")
        return avg

    def flush(self) -> None:
        """Fetches the pending step metrics into the totals (and tensorboard)."""
        if not self.pending:
            return
        fetched = to_host(self.pending)
        for j, m in enumerate(fetched):
            if not math.isfinite(float(m["loss"])):
                message = (
                    f"the training loss is {float(m['loss'])} at step {self.done + j} of epoch "
                    f"{self.epoch + 1}: the run stopped without saving the diverged state (its "
                    "checkpoints hold only earlier ones); try smaller learning rates"
                )
                self.logger.error(message)
                raise Diverged(message)
            for k in self.KEYS:
                self.totals[k] += float(m[k])
                self.tb.scalar(f"train/{k}", m[k], self.epoch * self.steps + self.done + j)
        self.pending, self.done = [], self.done + len(fetched)

    def close(self) -> None:
        self.bar.close()

    def averages(self) -> dict:
        return {k: v / max(self.done, 1) for k, v in self.totals.items()}


def log_validation(logger, tb, val: dict, epoch: int, epochs: int, step: int, width: int = 2):
    """pt.darts's closing Valid lines for an evaluation, and its tensorboard scalars."""
    logger.info(
        step_line(
            "Valid",
            epoch,
            epochs,
            val["steps"] - 1,
            val["steps"],
            val["loss"],
            val["top1"],
            val["top5"],
            width=width,
        )
    )
    logger.info(final_line("Valid", epoch, epochs, val["top1"], width=width))
    for k in EpochMeter.KEYS:
        tb.scalar(f"val/{k}", val[k], step)


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
