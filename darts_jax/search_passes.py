"""A search step's loss-gradient passes: one ``lax.scan`` over a shared body, or written out.

A second-order search step evaluates the supernet's loss gradient three times:
on the training batch at w (for the virtual step w'), on the validation batch
at w' (the alpha step), and on the training batch at w with the updated alphas
(the weight step); the finite difference adds two more at w +- eps v'. Written
out in sequence, XLA compiles one copy of the network's forward and backward
pass per evaluation. Here every pass is the same body, ``value_and_grad`` of
the loss with respect to (weights, alphas) at inputs chosen by the previous
pass, so the program holds the network's gradient once (plus, for second
order, the Hessian-vector product ``architect.alpha_hvp``) and XLA reuses one
pass's buffers for the next.

Measured on the 2-core CPU (BENCHMARKS.md, session 6), exact second order:
test config 37-41 s trace + compile instead of 52-55 s; default config 76 s
instead of 113-118 s and a 14.4 GB XLA plan instead of 37.2 GB, so the step
now runs on a 24 GB machine (70 s). The price is compute: the Hessian-vector
product recomputes the training pass's forward and backward that the
unrolled form keeps alive, 5-15 % slower steps at the test config. First
order has two passes only and runs faster written out (the scanned body
would compute weight gradients on the validation pass as well), so
``search_step`` scans second order and the finite difference only.

Each pass is followed by its own "glue" (``lax.switch`` on the pass index):
it reads the pass's gradients, does the small pytree arithmetic of DARTS's
alpha step (``architect``), and picks the next pass's weights, alphas and batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from darts_jax import architect


class PassInput(NamedTuple):
    """Where the next pass evaluates the loss gradient."""

    params: Any
    alphas: Any
    on_val: jax.Array  # bool scalar: the validation batch, else the training batch


class PassCarry(NamedTuple):
    """What the passes hand on: the alpha step's results, the finite difference's
    intermediate terms, and the weight pass's outputs."""

    alphas: Any  # after the alpha step
    a_opt_state: Any
    val_loss: jax.Array  # L_val at w' (second order, fd) or at w (first order)
    d_alpha: Any  # fd: grad_alpha L_val(w')
    direction: Any  # fd: v' = grad_w' L_val(w')
    eps: jax.Array  # fd: radius / ||v'||
    g_plus: Any  # fd: grad_alpha L_train(w + eps v')
    loss: jax.Array  # weight pass: L_train(w, new alphas), its logits and BN statistics
    logits: jax.Array
    batch_stats: Any
    w_grads: Any


class StepResult(NamedTuple):
    """The alpha step's results and the weight pass's loss, outputs and gradient."""

    alphas: Any
    a_opt_state: Any
    val_loss: jax.Array
    loss: jax.Array
    logits: jax.Array
    batch_stats: Any
    w_grads: Any


def scanned(
    mode: str,
    loss_fn: Callable,
    a_tx: optax.GradientTransformation,
    params,
    alphas,
    batch_stats,
    a_opt_state,
    train_batch,
    val_batch,
    virtual: architect.VirtualStep,
    num_classes: int,
    hvp_loss_fn: Callable | None = None,
) -> StepResult:
    """The alpha step (``mode`` in ``architect.MODES``) and the weight step's gradient
    at the updated alphas, as one scan over gradient passes.

    ``hvp_loss_fn``: the loss whose Hessian-vector product the exact second order
    takes (default ``loss_fn``): the same values, e.g. from a network that
    rematerialises more cells there (``--remat hvp``).

    Equal to ``written_out`` (tests check it, float64): the same alpha step
    and weight gradient; BN statistics of all but the weight pass are
    discarded, as there. Second order differs only in how it takes the same
    derivative: ``architect.alpha_hvp`` instead of jax.grad through the
    unrolled virtual step.
    """
    if mode not in architect.MODES:
        raise ValueError(f"unknown alpha gradient mode {mode!r}; choose one of {architect.MODES}")
    shapes = [tuple(x.shape) for x in (*train_batch, *val_batch)]
    if shapes[:2] != shapes[2:]:
        # One body serves both batches, so they must have one shape.
        raise ValueError(
            f"training and validation batches must have the same shapes for the scanned "
            f"passes, got images/labels {shapes[:2]} and {shapes[2:]}"
        )

    def grads(inp: PassInput):
        images = jnp.where(inp.on_val, val_batch[0], train_batch[0])
        labels = jnp.where(inp.on_val, val_batch[1], train_batch[1])
        return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            inp.params, inp.alphas, batch_stats, images, labels
        )

    def on_train(p, a):
        return PassInput(p, a, jnp.asarray(False))

    def alpha_step(carry: PassCarry, alpha_grads, val_loss):
        """Applies the alpha optimizer; the next pass is the weight pass."""
        updates, opt_state = a_tx.update(alpha_grads, a_opt_state, alphas)
        new_alphas = optax.apply_updates(alphas, updates)
        carry = carry._replace(alphas=new_alphas, a_opt_state=opt_state, val_loss=val_loss)
        return on_train(params, new_alphas), carry

    # Each glue: (this pass's input, carry, its ((loss, aux), (g_w, g_alpha))) -> (next input, carry).
    def first_order(inp, carry, out):  # validation batch at w
        (val_loss, _), (_, d_alpha) = out
        return alpha_step(carry, d_alpha, val_loss)

    def virtual_step(inp, carry, out):  # training batch at w
        _, (g_w, _) = out
        w_virtual = architect.virtual_weights(params, g_w, virtual)
        return PassInput(w_virtual, alphas, jnp.asarray(True)), carry

    def exact(inp, carry, out):  # validation batch at w'
        (val_loss, _), (v_w, d_alpha) = out
        hvp = architect.alpha_hvp(
            hvp_loss_fn or loss_fn, params, alphas, batch_stats, train_batch, v_w
        )
        return alpha_step(carry, architect.second_order_combine(d_alpha, hvp, virtual.xi), val_loss)

    def fd_plus(inp, carry, out):  # validation batch at w'
        (val_loss, _), (v_w, d_alpha) = out
        eps = architect.fd_epsilon(v_w)
        carry = carry._replace(val_loss=val_loss, d_alpha=d_alpha, direction=v_w, eps=eps)
        return on_train(architect.shifted_weights(params, v_w, eps), alphas), carry

    def fd_minus(inp, carry, out):  # training batch at w + eps v'
        carry = carry._replace(g_plus=out[1][1])
        return on_train(
            architect.shifted_weights(params, carry.direction, -carry.eps), alphas
        ), carry

    def fd_alpha(inp, carry, out):  # training batch at w - eps v'
        alpha_grads = architect.fd_combine(
            carry.d_alpha, carry.g_plus, out[1][1], virtual.xi, carry.eps
        )
        return alpha_step(carry, alpha_grads, carry.val_loss)

    def weight_pass(inp, carry, out):  # training batch at w, updated alphas
        (loss, (logits, stats)), (g_w, _) = out
        return inp, carry._replace(loss=loss, logits=logits, batch_stats=stats, w_grads=g_w)

    glues, start = {
        "first": ([first_order, weight_pass], PassInput(params, alphas, jnp.asarray(True))),
        "second": ([virtual_step, exact, weight_pass], on_train(params, alphas)),
        "fd": ([virtual_step, fd_plus, fd_minus, fd_alpha, weight_pass], on_train(params, alphas)),
    }[mode]

    zero = jnp.zeros((), jax.tree_util.tree_leaves(params)[0].dtype)
    zeros_w, zeros_a = (jax.tree_util.tree_map(jnp.zeros_like, t) for t in (params, alphas))
    carry = PassCarry(
        alphas=alphas,
        a_opt_state=a_opt_state,
        val_loss=zero,
        d_alpha=zeros_a,
        direction=zeros_w,
        eps=zero,
        g_plus=zeros_a,
        loss=zero,
        logits=jnp.zeros((train_batch[1].shape[0], num_classes), zero.dtype),
        batch_stats=batch_stats,
        w_grads=zeros_w,
    )

    def body(loop, index):
        inp, carry = loop
        return lax.switch(index, glues, inp, carry, grads(inp)), None

    (_, carry), _ = lax.scan(body, (start, carry), jnp.arange(len(glues)))
    return StepResult(
        carry.alphas,
        carry.a_opt_state,
        carry.val_loss,
        carry.loss,
        carry.logits,
        carry.batch_stats,
        carry.w_grads,
    )


def written_out(
    mode,
    loss_fn,
    a_tx,
    params,
    alphas,
    batch_stats,
    a_opt_state,
    train_batch,
    val_batch,
    virtual,
    num_classes,
) -> StepResult:
    """``scanned`` written out in sequence: the alpha
    step by ``architect.alpha_grad`` (second order: jax.grad through the unrolled
    virtual step), then the weight step's gradient at the updated alphas."""
    del num_classes
    # 1. alpha step (BN running statistics of this forward are discarded)
    (val_loss, _), alpha_grads = architect.alpha_grad(
        mode, loss_fn, params, alphas, batch_stats, train_batch, val_batch, virtual
    )
    a_updates, a_opt_state = a_tx.update(alpha_grads, a_opt_state, alphas)
    alphas = optax.apply_updates(alphas, a_updates)
    # 2. the weight step's gradient, with the updated alphas
    (loss, (logits, new_stats)), w_grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, alphas, batch_stats, *train_batch
    )
    return StepResult(alphas, a_opt_state, val_loss, loss, logits, new_stats, w_grads)
