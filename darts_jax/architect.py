"""Architecture (alpha) gradients: first order, exact second order, finite difference.

All functions are pure functions of pytrees. ``loss_fn(params, alphas,
batch_stats, images, labels) -> (loss, aux)`` is the training-mode loss of the
supernet (see ``search_step.make_loss_fn``); BN running-statistic updates it
returns in ``aux`` are discarded here.

Second order (DARTS eq. 7): the alpha gradient of L_val(w', alpha) with the
virtual step w' = w - xi * (mu * v + grad_w L_train(w, alpha) + wd * w), where
v is the weight optimizer's momentum buffer and xi its current learning rate.
``exact`` differentiates through that step with jax.grad (the Hessian term is
exact); ``finite_difference`` is the official code's central difference,
with pt.darts's precedence bug fixed.

The same exact gradient splits by the chain rule into grad_alpha L_val(w')
- xi * H v', with H v' = grad_alpha <grad_w L_train(w, alpha), v'> and
v' = grad_w' L_val(w', alpha): ``alpha_hvp`` computes H v' forward over
reverse. The search step uses that split (``search_passes``): its passes then
share one compiled body, so the step compiles faster and XLA plans far less
memory than with ``exact`` (37.2 -> 14.4 GB at the default config; see
BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from darts_jax import remat

MODES = ("first", "second", "fd")
FD_RADIUS = 0.01  # eps = FD_RADIUS / ||v'||, as in both PyTorch projects


class VirtualStep(NamedTuple):
    """What the virtual weight step needs from the weight optimizer."""

    xi: jax.Array  # current weight learning rate
    momentum_buffer: Any  # v, a pytree like params (zeros before the first step)
    momentum: float  # mu
    weight_decay: float  # wd


def virtual_weights(params, grads, step: VirtualStep):
    """w' = w - xi * (mu * v + g + wd * w): one SGD step without clipping."""
    return jax.tree_util.tree_map(
        lambda w, g, v: w - step.xi * (step.momentum * v + g + step.weight_decay * w),
        params,
        grads,
        step.momentum_buffer,
    )


def first_order(loss_fn, params, alphas, batch_stats, val_batch):
    """grad_alpha L_val(w, alpha). Returns ((loss, aux), alpha_grads)."""
    return jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
        params, alphas, batch_stats, *val_batch
    )


def exact(loss_fn, params, alphas, batch_stats, train_batch, val_batch, step: VirtualStep):
    """Exact second-order gradient: jax.grad through the unrolled virtual step."""

    def unrolled_val_loss(alphas):
        train_loss = lambda p: loss_fn(p, alphas, batch_stats, *train_batch)[0]  # noqa: E731
        w_virtual = virtual_weights(params, jax.grad(train_loss)(params), step)
        return loss_fn(w_virtual, alphas, batch_stats, *val_batch)

    return jax.value_and_grad(unrolled_val_loss, has_aux=True)(alphas)


def alpha_hvp(loss_fn, params, alphas, batch_stats, train_batch, tangent_w):
    """H t = grad_alpha <grad_w L_train(w, alpha), t>: the mixed second derivative
    applied to a weight-shaped ``tangent_w``, as the jvp of grad_alpha L_train
    along t (forward over reverse: no second backward pass, one pytree of
    tangents alongside the primal values)."""

    def train_alpha_grad(p):
        return jax.grad(loss_fn, argnums=1, has_aux=True)(p, alphas, batch_stats, *train_batch)[0]

    with remat.forward_mode():  # the network's custom_vjp rules admit no jvp
        return jax.jvp(train_alpha_grad, (params,), (tangent_w,))[1]


def second_order_combine(d_alpha, hvp, xi):
    """grad_alpha L_val(w') - xi * H v': the exact gradient from its two terms."""
    return jax.tree_util.tree_map(lambda d, h: d - xi * h, d_alpha, hvp)


def fd_epsilon(v_w, radius: float = FD_RADIUS):
    """The finite difference's step: eps = radius / ||v'||."""
    return radius / optax.tree.norm(v_w)


def shifted_weights(params, direction, scale):
    """w + scale * direction (the finite difference's w+ and w-)."""
    return jax.tree_util.tree_map(lambda p, v: p + scale * v, params, direction)


def fd_combine(d_alpha, g_plus, g_minus, xi, eps):
    """grad_alpha L_val(w') - xi * (g+ - g-) / (2 eps)."""
    return jax.tree_util.tree_map(
        lambda d, p, m: d - xi * (p - m) / (2.0 * eps), d_alpha, g_plus, g_minus
    )


def finite_difference(
    loss_fn,
    params,
    alphas,
    batch_stats,
    train_batch,
    val_batch,
    step: VirtualStep,
    radius: float = FD_RADIUS,
):
    """grad_alpha L_val(w') - xi * H v' with H v' by a central difference around w.

    eps = radius / ||v'||, v' = grad_w' L_val(w', alpha), w+- = w +- eps v',
    H v' ~ (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / (2 eps).
    The official radius 0.01 can cross ReLU/max-pool kinks: on small networks
    the difference is then far from the exact value (see tests).
    """
    train_grad_w = jax.grad(loss_fn, has_aux=True)(params, alphas, batch_stats, *train_batch)[0]
    w_virtual = virtual_weights(params, train_grad_w, step)
    (loss, aux), (v_w, d_alpha) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        w_virtual, alphas, batch_stats, *val_batch
    )
    eps = fd_epsilon(v_w, radius)

    def train_alpha_grad(sign):
        w = shifted_weights(params, v_w, sign * eps)
        return jax.grad(loss_fn, argnums=1, has_aux=True)(w, alphas, batch_stats, *train_batch)[0]

    g_plus, g_minus = train_alpha_grad(1.0), train_alpha_grad(-1.0)
    return (loss, aux), fd_combine(d_alpha, g_plus, g_minus, step.xi, eps)


def alpha_grad(mode: str, loss_fn, params, alphas, batch_stats, train_batch, val_batch, step):
    """Dispatches on ``mode`` in MODES. Returns ((val_loss, aux), alpha_grads)."""
    if mode == "first":
        return first_order(loss_fn, params, alphas, batch_stats, val_batch)
    if mode == "second":
        return exact(loss_fn, params, alphas, batch_stats, train_batch, val_batch, step)
    if mode == "fd":
        return finite_difference(loss_fn, params, alphas, batch_stats, train_batch, val_batch, step)
    raise ValueError(f"unknown alpha gradient mode {mode!r}; choose one of {MODES}")
