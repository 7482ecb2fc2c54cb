"""The three alpha gradients, checked against each other and against hand-written math (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_search import alpha_problem

from darts_jax import architect, remat

tree_map = jax.tree_util.tree_map


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


@pytest.fixture(scope="module")
def problem():
    return alpha_problem()


def _virtual(momentum, xi):
    return architect.VirtualStep(
        xi=jnp.float64(xi), momentum_buffer=momentum, momentum=0.9, weight_decay=3e-4
    )


@pytest.fixture(scope="module")
def grads(problem):
    """first order at w, exact and fd second order with xi = 0.5 (large: the Hessian term dominates)."""
    loss_fn, params, alphas, stats, train, val, momentum = problem
    with jax.enable_x64(True):
        step = _virtual(momentum, 0.5)
        alpha_grad = jax.jit(
            lambda m, p, a, s, t, v, st: architect.alpha_grad(m, loss_fn, p, a, s, t, v, st)[1],
            static_argnums=0,
        )
        out = {
            mode: alpha_grad(mode, params, alphas, stats, train, val, step)
            for mode in ("first", "second")
        }
        # xi is an argument of the compiled program: xi = 0 reuses it.
        out["second, xi = 0"] = alpha_grad(
            "second", params, alphas, stats, train, val, _virtual(momentum, 0.0)
        )
        # A small radius: the official 0.01 crosses ReLU/max-pool kinks on a net this small.
        out["fd"] = jax.jit(
            lambda p, a, s, t, v: architect.finite_difference(
                loss_fn, p, a, s, t, v, step, radius=1e-6
            )
        )(params, alphas, stats, train, val)[1]

        @jax.jit  # one program: eager op-by-op dispatch of these gradients is slower
        def independent(params, alphas):
            train_grad = jax.grad(lambda p: loss_fn(p, alphas, stats, *train)[0])(params)
            w_virtual = architect.virtual_weights(params, train_grad, step)
            # Independent route: d/dalpha L_val(w'(alpha), alpha) = dL_val/dalpha - xi * H v',
            # with H v' by forward-over-reverse (jvp of the alpha gradient along v').
            v_w = jax.grad(lambda w: loss_fn(w, alphas, stats, *val)[0])(w_virtual)
            d_alpha = jax.grad(lambda a: loss_fn(w_virtual, a, stats, *val)[0])(alphas)
            with remat.forward_mode():  # a jvp through the network: its remat as jax.checkpoint
                hvp = jax.jvp(
                    lambda w: jax.grad(lambda a: loss_fn(w, a, stats, *train)[0])(alphas),
                    (params,),
                    (v_w,),
                )[1]
            # The search step's split form (search_passes): the library's H v' and combine.
            hvp_library = architect.alpha_hvp(loss_fn, params, alphas, stats, train, v_w)
            return {
                "manual": tree_map(lambda d, h: d - 0.5 * h, d_alpha, hvp),
                "split": architect.second_order_combine(d_alpha, hvp_library, 0.5),
                "d_alpha_at_virtual": d_alpha,
            }

        out.update(independent(params, alphas))
    return {k: _flat(v) for k, v in out.items()}


def test_exact_second_order_equals_independent_forward_over_reverse(grads):
    np.testing.assert_allclose(grads["second"], grads["manual"], rtol=1e-10, atol=1e-14)


def test_split_form_with_alpha_hvp_equals_grad_through_the_unrolled_step(grads):
    """grad_alpha L_val(w') - xi * alpha_hvp(v'), as the search step takes it, equals
    ``exact`` (jax.grad through the unrolled virtual step)."""
    np.testing.assert_allclose(grads["split"], grads["second"], rtol=1e-10, atol=1e-14)


def test_finite_difference_agrees_with_exact(grads):
    hess_exact = grads["d_alpha_at_virtual"] - grads["second"]
    hess_fd = grads["d_alpha_at_virtual"] - grads["fd"]
    assert np.linalg.norm(hess_exact) > 0.1 * np.linalg.norm(grads["d_alpha_at_virtual"])
    rel = np.linalg.norm(hess_fd - hess_exact) / np.linalg.norm(hess_exact)
    assert rel < 1e-5, rel


def test_second_order_differs_from_first_order(grads):
    assert np.linalg.norm(grads["second"] - grads["first"]) > 1e-3 * np.linalg.norm(grads["first"])


def test_exact_with_zero_xi_equals_first_order(grads):
    np.testing.assert_allclose(grads["second, xi = 0"], grads["first"], rtol=1e-12, atol=1e-15)


def test_virtual_weights_formula():
    w = {"a": jnp.array([1.0, -2.0])}
    g = {"a": jnp.array([0.5, 0.25])}
    v = {"a": jnp.array([1.0, 1.0])}
    out = architect.virtual_weights(w, g, architect.VirtualStep(0.1, v, 0.9, 0.01))
    np.testing.assert_allclose(
        out["a"], [1.0 - 0.1 * (0.9 + 0.5 + 0.01), -2.0 - 0.1 * (0.9 + 0.25 - 0.02)], rtol=1e-6
    )


def test_unknown_mode_is_an_error(problem):
    loss_fn, params, alphas, stats, train, val, momentum = problem
    with pytest.raises(ValueError, match="unknown alpha gradient mode"):
        architect.alpha_grad("third", loss_fn, params, alphas, stats, train, val, None)
