"""Saving and restoring a run's state pytree with orbax, plus JSON metadata."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from darts_jax.config import UsageError


class Checkpoints:
    """Keeps the last ``max_to_keep`` checkpoints of a run under ``directory``,
    numbered in the order they were saved. A context manager: ``close`` on exit."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self, state: Any, meta: dict) -> int:
        """Saves as the next number and waits, so that a finished epoch is never
        lost; returns the number. Numbers only grow, whatever the run's epoch
        length, so the latest save is always the one a resume reads."""
        step = (self.latest_step() or 0) + 1
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()
        return step

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores into the structure (and shardings) of ``target``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except ValueError as e:  # orbax: the tree structures or shapes differ
            raise UsageError(
                f"the checkpoint of step {step} under {self.directory} does not fit this "
                "run's state: it was written with other network settings (e.g. "
                "--init_channels, --layers, --n_nodes) or by a darts_jax version with "
                "another parameter layout (search cells store the edges between nodes "
                "as 'node_edges' since 2026-11-28). Resume with the settings and version "
                "that wrote it, or start a new run under another --name. "
                f"orbax: {str(e).splitlines()[0][:300]}"
            ) from e
        return restored["state"], dict(restored["meta"])

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of a checkpoint alone (e.g. to rebuild its model first)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()
