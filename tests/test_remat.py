"""recompute_in_backward: same derivatives as the plain function, less memory on XLA:CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import remat


def _block(x, w):
    for i in range(4):
        x = jnp.sin(x * w[i]) + x
    return x


def _chain_loss(block):
    def loss(x, ws):
        for k in range(ws.shape[0]):
            x = block(x, ws[k])
        return jnp.sum(jnp.tanh(x))

    return loss


def test_values_and_derivatives_equal_the_plain_function():
    rng = np.random.default_rng(0)
    with jax.enable_x64():
        x, ws = jnp.asarray(rng.normal(size=(5, 7))), jnp.asarray(rng.normal(size=(3, 4)))
        plain, tied = _chain_loss(_block), _chain_loss(remat.recompute_in_backward(_block))
        np.testing.assert_allclose(tied(x, ws), plain(x, ws), rtol=1e-14)
        for got, want in zip(
            jax.grad(tied, argnums=(0, 1))(x, ws),
            jax.grad(plain, argnums=(0, 1))(x, ws),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-12)

        def grad_norm(loss):  # reverse over reverse, as in the unrolled exact step
            return jax.grad(lambda ws: jnp.sum(jax.grad(loss)(x, ws) ** 2))(ws)

        np.testing.assert_allclose(grad_norm(tied), grad_norm(plain), rtol=1e-11)


def test_forward_mode_needs_the_context():
    x, ws = jnp.ones((2, 3)), jnp.full((2, 4), 0.5)
    probe = jnp.full((2, 3), 0.1)
    plain = _chain_loss(_block)

    def hvp(loss):  # forward over reverse: a jvp along x of grad_ws
        return jax.jvp(lambda x: jax.grad(loss, argnums=1)(x, ws), (x,), (probe,))[1]

    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: _chain_loss(remat.recompute_in_backward(_block))(x, ws), (x,), (probe,))
    with remat.forward_mode():
        tied = _chain_loss(remat.recompute_in_backward(_block))
        np.testing.assert_allclose(hvp(tied), hvp(plain), rtol=1e-5)
    # the context ends with its block: traced again outside, the custom rule is back
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: _chain_loss(remat.recompute_in_backward(_block))(x, ws), (x,), (probe,))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's buffer plan")
def test_compiled_plan_shrinks_where_jax_checkpoint_does_not():
    """Three blocks, forward + backward, XLA's planned temporaries: jax.checkpoint
    saves nothing on XLA:CPU (the reason for this module); recompute_in_backward
    keeps one block's intermediates instead of three."""

    def plan(wrap):
        grad = jax.jit(jax.grad(_chain_loss(wrap(_block)), argnums=(0, 1)))
        compiled = grad.lower(jnp.ones((256, 1024)), jnp.ones((3, 4))).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, checkpointed, tied = (
        plan(lambda f: f),
        plan(jax.checkpoint),
        plan(remat.recompute_in_backward),
    )
    assert checkpointed > 0.9 * plain  # if XLA:CPU starts honouring checkpoints, revisit
    assert tied < 0.7 * plain, (plain, tied)


def test_inside_gradient_keeps_the_rule_under_forward_mode():
    """Forward over reverse where every call has a differentiated argument (the
    exact Hessian-vector product's shape): the custom rule runs there too, with
    the plain function's values; ``disabled()`` returns the function itself."""
    with jax.enable_x64():
        x, ws = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), jnp.full((2, 4), 0.5)
        probe = jnp.full((2, 3), 0.1)

        def hvp(block):
            grad_ws = jax.grad(_chain_loss(block), argnums=1)
            return jax.jvp(lambda x: grad_ws(x, ws), (x,), (probe,))[1]

        with remat.forward_mode():
            kept = remat.recompute_in_backward(_block, inside_gradient=True)
            fallback = remat.recompute_in_backward(_block)
            np.testing.assert_allclose(hvp(kept), hvp(_block), rtol=1e-12)
    assert not isinstance(fallback, jax.custom_vjp) and isinstance(kept, jax.custom_vjp)
    with remat.disabled():
        assert remat.recompute_in_backward(_block) is _block
    assert remat.recompute_in_backward(_block) is not _block
