import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import optim


def test_epoch_cosine_schedule_follows_pt_darts_epoch_semantics():
    lr, lr_min, epochs, steps = 0.025, 0.001, 50, 10
    sched = optim.epoch_cosine_schedule(lr, lr_min, epochs, steps)

    def torch_value(t):
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / epochs)) / 2

    assert float(sched(0)) == pytest.approx(torch_value(1))  # epoch 0 uses the second value
    assert float(sched(9)) == pytest.approx(torch_value(1))  # constant within an epoch
    assert float(sched(10)) == pytest.approx(torch_value(2))
    assert float(sched(49 * steps)) == pytest.approx(lr_min)
    assert float(sched(10_000)) == pytest.approx(lr_min)
    with pytest.raises(ValueError):
        optim.epoch_cosine_schedule(lr, lr_min, 0, steps)


def test_weight_optimizer_is_torch_sgd_after_clipping():
    lr, mu, wd, clip = 0.1, 0.9, 0.01, 1.0
    tx = optim.weight_optimizer(optax.constant_schedule(lr), mu, wd, clip)
    w = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([-1.0])}
    state = tx.init(w)
    w_np = {k: np.asarray(v, np.float64) for k, v in w.items()}
    buf = {k: np.zeros_like(v) for k, v in w_np.items()}
    for g_scale in (3.0, 0.1):
        g = {"a": jnp.array([1.0, -2.0]) * g_scale, "b": jnp.array([2.0]) * g_scale}
        updates, state = tx.update(g, state, w)
        w = optax.apply_updates(w, updates)
        norm = math.sqrt(sum(float(np.sum(np.square(v))) for v in g.values()))
        factor = min(1.0, clip / (norm + 1e-6))  # torch's clip_grad_norm_
        for k in w_np:
            d = np.asarray(g[k]) * factor + wd * w_np[k]
            buf[k] = mu * buf[k] + d
            w_np[k] = w_np[k] - lr * buf[k]
        for k in w_np:
            np.testing.assert_allclose(w[k], w_np[k], rtol=1e-6)
    np.testing.assert_allclose(optim.momentum_buffer(state)["a"], buf["a"], rtol=1e-6)


def test_momentum_buffer_starts_at_zero():
    tx = optim.weight_optimizer(optax.constant_schedule(0.1), 0.9, 3e-4, 5.0)
    state = tx.init({"a": jnp.ones(3)})
    np.testing.assert_array_equal(optim.momentum_buffer(state)["a"], 0.0)


def test_alpha_optimizer_is_torch_adam_with_coupled_decay():
    lr, wd, b1, b2, eps = 3e-4, 1e-3, 0.5, 0.999, 1e-8
    tx = optim.alpha_optimizer(lr, wd)
    a = jnp.array([0.5, -0.2])
    state = tx.init(a)
    a_np, m, v = np.asarray(a, np.float64), 0.0, 0.0
    for t, g in enumerate([np.array([1.0, -3.0]), np.array([0.2, 0.4])], start=1):
        updates, state = tx.update(jnp.asarray(g), state, a)
        a = optax.apply_updates(a, updates)
        d = g + wd * a_np
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        a_np = a_np - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(a, a_np, rtol=1e-5)


def test_epoch_step_schedule_is_the_official_imagenet_one():
    schedule = optim.epoch_step_schedule(0.1, 0.97, steps_per_epoch=10)
    got = [float(schedule(jnp.asarray(s))) for s in (0, 9, 10, 25)]
    np.testing.assert_allclose(got, [0.097, 0.097, 0.1 * 0.97**2, 0.1 * 0.97**3], rtol=1e-6)
