"""When a training loop saves inside an epoch: on a stop request, and every few minutes.

A search epoch at the default config takes hours on a CPU, and cluster
schedulers stop jobs with SIGTERM (then SIGKILL after a grace period). So the
loops also save mid-epoch checkpoints, from which ``--resume`` continues at the
next step exactly as if the run had not stopped (the same batches, the same
random numbers: both follow the step count):

- after the step during which a stop was requested: SIGTERM or Ctrl-C
  (SIGINT) in a single-process run (a second Ctrl-C quits at once, without
  saving); in a multi-process run, JAX's preemption sync point, which turns
  SIGTERM on any host into the same step on every host;
- every ``save_minutes`` minutes of training (0: only at epoch ends and on
  stop requests). A multi-process run decides this at its print points, where
  the hosts wait for each other anyway, by process 0's clock.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

import jax
import numpy as np

STOP, SAVE = "stop", "save"


class Stopped(Exception):  # noqa: N818 (a stop, not an error)
    """A loop saved a checkpoint and stopped on request; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class SaveTriggers:
    """Tells a loop, after each step, whether to save (``SAVE``), save and stop
    (``STOP``) or go on (None). A context manager: signal handlers are installed
    on entry (single-process runs) and the previous ones restored on exit.

    ``sync_point(step) -> bool`` and ``agree(flag) -> bool`` stand for JAX's
    multi-host preemption sync point and a broadcast of process 0's decision;
    the defaults use JAX's when the run has several processes.
    """

    def __init__(
        self,
        save_minutes: float,
        clock: Callable[[], float] = time.monotonic,
        multi_process: bool | None = None,
        sync_point: Callable[[int], bool] | None = None,
        agree: Callable[[bool], bool] | None = None,
    ):
        if save_minutes < 0:
            raise ValueError(f"save_minutes must be >= 0, got {save_minutes}")
        self.save_seconds = save_minutes * 60.0
        self.clock = clock
        self.multi_process = jax.process_count() > 1 if multi_process is None else multi_process
        self.sync_point = sync_point or _jax_sync_point
        self.agree = agree or _broadcast_from_process_0
        self.signum: int | None = None  # the stop request, once one came
        self._previous: dict[int, object] = {}
        self.saved()

    def __enter__(self) -> SaveTriggers:
        # Multi-process runs use JAX's preemption service; Python sets handlers
        # only in the main thread.
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._request_stop)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _request_stop(self, signum, frame) -> None:
        del frame
        self.signum = signum
        again = ""
        if signum == signal.SIGINT:  # a second Ctrl-C quits without saving
            signal.signal(signal.SIGINT, signal.default_int_handler)
            again = "; Ctrl-C again quits without saving"
        name = signal.Signals(signum).name
        print(f"\n{name}: saving after the current step, then stopping{again}", file=sys.stderr)

    def stop_requested(self) -> bool:
        """Whether this process received a stop request (single-process runs)."""
        return self.signum is not None and not self.multi_process

    def saved(self) -> None:
        """Restarts the clock: call after every save, the epoch-end saves included."""
        self._last_save = self.clock()

    def check(self, step: int, at_print_point: bool) -> str | None:
        """After the step that brought the run to ``step`` steps: STOP, SAVE or None.
        ``at_print_point``: the loop fetched metrics at this step (multi-process
        runs decide timed saves only there)."""
        if self.multi_process:
            if self.sync_point(step):
                self.signum = self.signum or signal.SIGTERM
                return STOP
            if not (self.save_seconds and at_print_point):
                return None
            return SAVE if self.agree(self._time_is_up()) else None
        if self.signum is not None:
            return STOP
        return SAVE if self.save_seconds and self._time_is_up() else None

    def _time_is_up(self) -> bool:
        return self.clock() - self._last_save >= self.save_seconds

    def stopped(self, where: str) -> Stopped:
        """The exception a loop raises once it saved after a stop request."""
        name = signal.Signals(self.signum).name
        return Stopped(self.signum, f"{name}: saved {where}; continue with --resume")


def _jax_sync_point(step: int) -> bool:
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)


def _broadcast_from_process_0(flag: bool) -> bool:
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))
