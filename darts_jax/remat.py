"""Rematerialisation that holds on XLA:CPU.

``jax.checkpoint`` saves memory only if the compiler keeps the recomputation
apart from the forward pass and runs it late. On XLA:CPU (jax 0.10.2) neither
holds: the optimization barriers JAX places around a recomputation are removed
early in the CPU pipeline, CSE then merges the recomputed values with the
forward pass's identical ones, and those stay alive from the forward pass to
the backward pass as if never rematerialised (the same finding as
jax-ml/jax#19822). Measured on one search cell at the default config's
first-cell shapes, forward + backward: XLA planned 2.47 GB with the depthwise
convs under ``jax.checkpoint`` and 1.66 GB with ``recompute_in_backward``;
three chained cells under ``jax.checkpoint`` 7.0 GB, under
``recompute_in_backward`` 2.15 GB.

``recompute_in_backward(fn)`` is a ``custom_vjp`` whose forward saves only the
inputs and whose backward recomputes ``fn`` from inputs plus a zero computed
from the incoming cotangent. The added zero is a real data dependency: the
recomputation cannot run before that cotangent exists, and its values differ
(to the compiler) from the forward pass's, so nothing is merged. The result is
bit-identical for finite cotangents (x + 0.0 == x); a non-finite cotangent
turns the recomputed values into NaN, where the gradient was not finite anyway.
The backward rule is ordinary JAX code, so the wrapped function differentiates
to any order in reverse mode. Forward mode is what a ``custom_vjp`` does not
allow (JAX raises where a jvp meets it outside a gradient trace), so code that
takes a jvp traces under ``forward_mode()``, in which ``recompute_in_backward``
is ``jax.checkpoint``: same values, the memory behaviour of before.
Forward over reverse through the custom rule did run (where every call sat
inside the gradient trace), but at the default config it made the
second-order step's plan larger (13.1 GB against 12.0 GB) and its compile
slower (130 s against 118 s).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
from jax import lax

_FORWARD_MODE = contextvars.ContextVar("darts_jax_remat_forward_mode", default=False)
_DISABLED = contextvars.ContextVar("darts_jax_remat_disabled", default=False)


@contextlib.contextmanager
def forward_mode() -> Iterator[None]:
    """Within: ``recompute_in_backward`` is ``jax.checkpoint``, which forward-mode
    autodiff (``jax.jvp``) can differentiate. Read when a function is traced."""
    token = _FORWARD_MODE.set(True)
    try:
        yield
    finally:
        _FORWARD_MODE.reset(token)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within: ``recompute_in_backward(fn)`` is ``fn`` itself, for code that an
    enclosing rule already recomputes as a whole (a rematerialised search cell):
    a nested ``jax.checkpoint`` would only give XLA more program to compile.
    Read when a function is traced."""
    token = _DISABLED.set(True)
    try:
        yield
    finally:
        _DISABLED.reset(token)


def after(values, anchor):
    """``values`` unchanged, made data-dependent on ``anchor`` (any pytree with a
    leaf) through an added zero that the compiler cannot fold away."""
    leaf = jax.tree_util.tree_leaves(anchor)[0]
    zero = 0.0 * lax.stop_gradient(leaf.reshape(-1)[0])
    return jax.tree_util.tree_map(lambda v: v + zero.astype(v.dtype), values)


def recompute_in_backward(fn: Callable, inside_gradient: bool = False) -> Callable:
    """``fn`` (arrays in, pytree of arrays out) that keeps only its inputs for the
    backward pass and recomputes itself there, after its output's cotangent.

    Under ``forward_mode()``: ``jax.checkpoint(fn)``, unless ``inside_gradient``:
    the caller guarantees that wherever a jvp meets ``fn``, a reverse-mode trace
    differentiates one of its arguments too (as the exact Hessian-vector
    product's gradient does the alpha weights), so the custom rule runs inside
    that trace and forward mode differentiates the rule itself."""
    if _DISABLED.get():
        return fn
    if _FORWARD_MODE.get() and not inside_gradient:
        return jax.checkpoint(fn)

    @jax.custom_vjp
    def wrapped(*args):
        return fn(*args)

    def forward(*args):
        return fn(*args), args

    def backward(args, cotangent):
        _, vjp = jax.vjp(fn, *after(args, cotangent))
        return vjp(cotangent)

    wrapped.defvjp(forward, backward)
    return wrapped
