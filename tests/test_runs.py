"""runs.compile_on_first_call: compiled once, ahead of the first execution, with
JAX's caches dropped and the compiler's freed memory handed back in between;
same results as the jit."""

import logging

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import runs, xla_env


def test_compile_on_first_call(monkeypatch, caplog):
    events = []
    real_release = xla_env.release_freed_memory
    monkeypatch.setattr(
        xla_env, "release_freed_memory", lambda: events.append("release") or real_release()
    )

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
    assert other._cache_size() == 0  # JAX's in-memory caches dropped with it
    np.testing.assert_allclose(state, [18.0, 18.0, 18.0])  # 0 + 6 * (0 + 1 + 2)
    np.testing.assert_allclose(metrics["loss"], 4.0)
    assert [r.message.startswith("Compiled the test step in ") for r in caplog.records] == [True]
