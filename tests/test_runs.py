"""runs.compile_on_first_call: compiled once, ahead of the first execution, with
JAX's caches dropped and the compiler's freed memory handed back in between;
same results as the jit; runs.release_init_memory drops the caches too, once
per process. runs.run_steps and runs.resume_point: an epoch stopped after a
save and resumed runs the same steps on the same batches."""

import dataclasses
import json
import logging
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import preemption, reporting, runs, xla_env
from darts_jax.config import UsageError


@pytest.mark.parametrize("drop_from_bytes, dropped", [(0, True), (1 << 30, False)])
def test_compile_on_first_call(monkeypatch, caplog, drop_from_bytes, dropped):
    events = []
    real_release = xla_env.release_freed_memory
    monkeypatch.setattr(
        xla_env, "release_freed_memory", lambda: events.append("release") or real_release()
    )
    monkeypatch.setattr(runs, "DROP_CACHES_FROM_BYTES", drop_from_bytes)

    def step(state, batch):
        events.append("trace")
        return state + batch.sum(), {"loss": jnp.square(batch).mean()}

    jitted = jax.jit(step, donate_argnums=0)
    other = jax.jit(lambda x: x + 1)
    other(jnp.zeros(2))
    assert other._cache_size() == 1
    logger = logging.getLogger("test_compile_on_first_call")
    call = runs.compile_on_first_call(jitted, logger, "test step")
    state = jnp.zeros(3)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(3):
            batch = jnp.full((2, 3), float(i))
            state, metrics = call(state, batch)
    assert events == ["trace", "release"]  # traced and compiled once, then trimmed
    # JAX's in-memory caches dropped with it only for a step planning enough memory
    assert other._cache_size() == (0 if dropped else 1)
    np.testing.assert_allclose(state, [18.0, 18.0, 18.0])  # 0 + 6 * (0 + 1 + 2)
    np.testing.assert_allclose(metrics["loss"], 4.0)
    assert [r.message.startswith("Compiled the test step in ") for r in caplog.records] == [True]


def test_release_init_memory_drops_the_caches_once_per_process(monkeypatch):
    """After the first state is built its eager programs go, whatever the step will
    plan; after later states the caches stay (they hold what the process reuses)."""
    released = []
    monkeypatch.setattr(xla_env, "release_freed_memory", lambda: released.append(True))
    monkeypatch.setattr(runs, "_init_memory_released", False)
    eager_like = jax.jit(lambda x: x * 2)
    eager_like(jnp.ones(3))
    assert eager_like._cache_size() == 1
    runs.release_init_memory()
    assert eager_like._cache_size() == 0 and released == [True]
    eager_like(jnp.ones(3))
    runs.release_init_memory()
    assert eager_like._cache_size() == 1 and released == [True]


def test_planned_bytes_counts_arguments_outputs_and_temporaries():
    compiled = jax.jit(lambda x: (x @ x.T).sum(0)).lower(jnp.zeros((64, 8))).compile()
    assert 64 * 8 * 4 + 64 * 4 <= runs.planned_bytes(compiled) < 1 << 20
    assert runs.planned_bytes(object()) == 0  # a backend that does not say


class StopAt:
    """SaveTriggers' interface: a stop request after global step ``stop``, timed saves
    after the global steps in ``saves``."""

    def __init__(self, stop=None, saves=()):
        self.stop, self.saves, self.checked, self.resets = stop, set(saves), [], 0

    def check(self, step, at_print_point):
        self.checked.append(step)
        return (
            preemption.STOP
            if step == self.stop
            else (preemption.SAVE if step in self.saves else None)
        )

    def saved(self):
        self.resets += 1

    def stopped(self, where):
        return preemption.Stopped(15, where)


def _epoch(first, batches, triggers, state=(), totals=None, epoch=1, steps=6):
    """One epoch of a toy step from step ``first``: the state is the batches seen so
    far, the 'loss' the batch."""
    saves = []
    meter = reporting.EpochMeter(
        logging.getLogger("test_run_steps"),
        reporting.TensorBoard(None),
        epoch,
        3,
        steps,
        progress=False,
        done=first,
        totals=totals,
    )
    step = lambda s, b: ((*s, b), {"loss": b, "top1": b / 10, "top5": b / 100})  # noqa: E731

    def save(state, done):
        saves.append((state, done, dict(meter.totals)))

    try:
        state = runs.run_steps(step, state, batches, first, meter, 4, triggers, save)
    except preemption.Stopped:
        state = None
    except reporting.Diverged:
        assert saves == []
        raise
    return state, meter, saves


def test_an_epoch_stopped_and_resumed_runs_the_same_steps():
    batches = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    triggers = StopAt(stop=6 + 2, saves=[6 + 1])  # global steps: epoch 1 of 6-step epochs
    state, meter, saves = _epoch(0, batches, triggers)
    assert state is None and triggers.checked == [7, 8] and triggers.resets == 2
    assert [s[:2] for s in saves] == [((1.0,), 1), ((1.0, 2.0), 2)]
    saved_state, _, totals = saves[-1]
    assert totals["loss"] == 3.0 and meter.done == 2  # both steps' metrics, fetched

    # Resumed at step 2 with the rest of the epoch's batches, the saved totals.
    triggers = StopAt()
    state, meter, _ = _epoch(2, batches[2:], triggers, saved_state, totals)
    assert triggers.checked == [9, 10, 11, 12]
    uninterrupted_state, uninterrupted, _ = _epoch(0, batches, StopAt())
    assert state == uninterrupted_state == tuple(batches)
    assert meter.done == 6 and meter.averages()["loss"] == pytest.approx(21.0 / 6)
    assert meter.averages() == uninterrupted.averages()


def test_an_epoch_saved_after_its_last_step_resumes_with_no_steps():
    totals = {"loss": 21.0, "top1": 2.1, "top5": 0.21}
    state, meter, saves = _epoch(6, [], StopAt(), ("saved",), totals)
    assert state == ("saved",) and saves == [] and meter.averages()["loss"] == 3.5


def test_a_nan_loss_stops_the_epoch_and_is_never_saved(caplog):
    # A timed save is due after step 3, whose loss is NaN: the meter's fetch before
    # the save finds it, so the diverged state is not saved.
    batches = [1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]
    with pytest.raises(reporting.Diverged, match="loss is nan at step 2 of epoch 2"):
        _epoch(0, batches, StopAt(saves=[6 + 3]))
    assert "loss is nan at step 2" in caplog.text


def test_the_batches_must_cover_the_epoch():
    with pytest.raises(RuntimeError, match="ran to step 5 of 6"):
        _epoch(2, [1.0, 1.0, 1.0], StopAt())


def test_resume_point():
    assert runs.resume_point({"epoch": 3}, 10) == (4, 0, None)
    mid = {"epoch": 3, "steps_done": 7, "steps_per_epoch": 10, "train_totals": {"loss": 1.0}}
    assert runs.resume_point(mid, 10) == (3, 7, {"loss": 1.0})
    with pytest.raises(UsageError, match="step 7 of an epoch of 10 steps.*--steps_per_epoch"):
        runs.resume_point(mid, 12)


def test_epoch_steps_drops_the_partial_batch_caps_and_refuses_a_batch_beyond_the_split():
    assert runs.epoch_steps(718, 64, 0, "images") == 11
    assert runs.epoch_steps(718, 64, 3, "images") == 3
    assert runs.epoch_steps(718, 718, 0, "images") == 1
    with pytest.raises(UsageError, match="--batch_size 719 exceeds the 718 weight-split images"):
        runs.epoch_steps(718, 719, 0, "weight-split images")


@pytest.mark.parametrize(
    "env, jax_says, message",
    [
        ({}, "coordinator_address should be defined.", "coordinator_address should be defined"),
        ({"JAX_NUM_PROCESSES": "two"}, None, "invalid literal for int() with base 10: 'two'"),
    ],
)
def test_distributed_without_a_cluster_exits_2_saying_what_to_set(
    env, jax_says, message, monkeypatch, capsys
):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls = []

    def initialize(**kwargs):  # jax's own, as it fails where it detects no cluster
        calls.append(kwargs)
        raise ValueError(jax_says)

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # leave gloo unset here
    ran = []
    cfg = types.SimpleNamespace(distributed=True)
    assert runs.exit_status(ran.append, cfg) == 2
    assert not ran and len(calls) == (0 if jax_says is None else 1)
    err = capsys.readouterr().err
    assert f"error: --distributed: {message}" in err and "JAX_COORDINATOR_ADDRESS=host:port" in err


def test_changed_flags_names_what_a_resume_changes_and_ignores_where_and_how_it_runs():
    from darts_jax.config import SearchConfig

    saved = SearchConfig(name="a", dataset="digits", epochs=50, w_lr=0.025)
    meta = json.loads(json.dumps({"flags": runs.run_flags(saved)}))  # as the checkpoint holds it
    same = dataclasses.replace(
        saved, resume=True, out_dir="elsewhere", gpus="all", progress=False, remat="none"
    )
    assert runs.changed_flags(meta, runs.run_flags(same)) == []
    resumed = dataclasses.replace(same, epochs=60, w_lr=0.05)
    assert runs.changed_flags(meta, runs.run_flags(resumed)) == [
        "--w_lr 0.025 -> 0.05",
        "--epochs 50 -> 60",
    ]
    old_meta = {"epoch": 3}  # saved before flags were stored
    assert runs.changed_flags(old_meta, runs.run_flags(resumed)) == []


def test_a_genotype_given_another_way_is_no_change(tmp_path):
    from darts_jax import genotypes
    from darts_jax.config import FinalConfig

    path = tmp_path / "genotype.txt"
    path.write_text(genotypes.to_str(genotypes.DARTS_V2) + "\n")
    saved = FinalConfig(name="a", dataset="digits", genotype="DARTS_V2")
    meta = json.loads(json.dumps({"flags": runs.run_flags(saved)}))

    def changes(genotype):
        return runs.changed_flags(
            meta, runs.run_flags(dataclasses.replace(saved, genotype=genotype))
        )

    assert changes(str(path)) == []
    changed = changes("DARTS_V1")
    assert len(changed) == 1 and changed[0].startswith("--genotype Genotype(")
