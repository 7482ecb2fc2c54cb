"""When the loops save inside an epoch: stop requests (signals, JAX's multi-host
sync point) and timed saves."""

import os
import signal

import pytest

from darts_jax.preemption import SAVE, STOP, SaveTriggers


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_sigterm_stops_after_the_step_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with SaveTriggers(0) as triggers:
        assert triggers.check(1, False) is None and not triggers.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert triggers.stop_requested()
        assert triggers.check(2, False) == STOP
        stopped = triggers.stopped("after step 2")
    assert signal.getsignal(signal.SIGTERM) is before
    assert stopped.exit_code == 143
    assert str(stopped) == "SIGTERM: saved after step 2; continue with --resume"


def test_a_second_ctrl_c_quits_without_saving(capsys):
    before = signal.getsignal(signal.SIGINT)
    with SaveTriggers(0) as triggers:
        os.kill(os.getpid(), signal.SIGINT)  # the first one only asks to stop
        assert triggers.check(1, False) == STOP
        assert "Ctrl-C again quits without saving" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert triggers.stopped("x").exit_code == 130


def test_timed_saves_follow_the_clock_from_the_last_save():
    clock = Clock()
    with SaveTriggers(2, clock=clock) as triggers:
        clock.now = 119.0
        assert triggers.check(1, False) is None
        clock.now = 120.0
        assert triggers.check(2, False) == SAVE
        triggers.saved()  # e.g. an epoch-end save
        clock.now = 200.0
        assert triggers.check(3, True) is None
        clock.now = 240.0
        assert triggers.check(4, False) == SAVE


def test_zero_minutes_saves_only_on_stop_requests():
    clock = Clock()
    with SaveTriggers(0, clock=clock) as triggers:
        clock.now = 1e9
        assert triggers.check(1, True) is None


def test_multi_process_runs_stop_at_jax_sync_point_and_time_saves_at_print_points():
    clock = Clock()
    asked, agreed = [], []

    def sync_point(step):
        asked.append(step)
        return step == 5

    def agree(flag):  # process 0 decides
        agreed.append(flag)
        return flag

    before = signal.getsignal(signal.SIGTERM)
    with SaveTriggers(1, clock, True, sync_point, agree) as triggers:
        assert signal.getsignal(signal.SIGTERM) is before  # JAX's service handles it
        clock.now = 100.0
        assert triggers.check(1, False) is None  # not a print point: no broadcast
        assert triggers.check(2, True) == SAVE
        triggers.saved()
        assert triggers.check(3, True) is None
        assert triggers.check(5, False) == STOP
        assert not triggers.stop_requested()  # only the sync point speaks for all hosts
    assert asked == [1, 2, 3, 5] and agreed == [True, False]
    assert triggers.stopped("x").exit_code == 143


def test_negative_minutes_is_an_error():
    with pytest.raises(ValueError, match="save_minutes must be >= 0"):
        SaveTriggers(-1)
