"""The final network: parameter counts, shapes, aux head, drop path (shape evaluation: no compile)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import genotypes as G
from darts_jax.final_model import (
    FinalNetwork,
    aux_head_input_size,
    aux_head_min_size,
    count_params_excluding_aux,
    drop_path,
)

RNGS = {"params": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)}


def _shapes(model, x_shape, train=True):
    return jax.eval_shape(lambda: model.init(RNGS, jnp.zeros(x_shape), train=train))


@pytest.mark.parametrize("genotype, millions", [(G.CIFAR10, 2.84), (G.DARTS_V2, 3.35)])
def test_parameter_counts_at_c36_20_cells(genotype, millions):
    variables = _shapes(FinalNetwork(genotype, C=36, num_classes=10, layers=20), (2, 32, 32, 3))
    assert round(count_params_excluding_aux(variables["params"]) / 1e6, 2) == millions
    assert "aux_head" in variables["params"]


def test_output_shapes_and_aux_head_only_in_training():
    model = FinalNetwork(G.MNIST, C=4, num_classes=7, layers=3)
    variables = _shapes(model, (2, 32, 32, 1))
    train_out = jax.eval_shape(
        lambda v: model.apply(
            v,
            jnp.zeros((3, 32, 32, 1)),
            train=True,
            drop_prob=0.2,
            rngs={"drop_path": RNGS["drop_path"]},
            mutable=["batch_stats"],
        ),
        variables,
    )
    (logits, aux), _ = train_out
    assert logits.shape == (3, 7) and aux.shape == (3, 7)
    eval_out = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((3, 32, 32, 1)), train=False), variables
    )
    assert eval_out.shape == (3, 7)
    no_aux = FinalNetwork(G.MNIST, C=4, num_classes=7, layers=3, auxiliary=False)
    assert "aux_head" not in _shapes(no_aux, (2, 32, 32, 1))["params"]


@pytest.mark.parametrize(
    "size, layers, imagenet, expected",
    [
        (32, 20, False, 8),
        (28, 3, False, 7),
        (8, 5, False, 2),
        (22, 1, False, 11),
        (12, 2, False, 3),
        (224, 14, True, 7),
        (128, 3, True, 4),
    ],
)
def test_aux_head_input_size_is_what_the_network_feeds_it(size, layers, imagenet, expected):
    """The size the flag check predicts (``config``) is the head's real input: the
    network builds exactly where it is large enough, and raises otherwise."""
    assert aux_head_input_size(size, layers, imagenet) == expected
    model = FinalNetwork(G.DARTS_V2, C=4, num_classes=3, layers=layers, imagenet=imagenet)
    if expected >= aux_head_min_size(imagenet):
        variables = _shapes(model, (2, size, size, 3))
        kernel = variables["params"]["aux_head"]["conv1"]  # (channels in, 128)
        assert kernel.shape[1] == 128
    else:
        with pytest.raises(ValueError, match=f"needs >= .*got {expected}x{expected}"):
            _shapes(model, (2, size, size, 3))


def test_drop_path_keeps_the_expectation():
    x = jnp.ones((20000, 1, 1, 1))
    y = drop_path(x, jnp.float32(0.3), jax.random.PRNGKey(0))
    assert float((y == 0).mean()) == pytest.approx(0.3, abs=0.02)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.7], rtol=1e-6)


def test_drop_path_is_off_at_eval_and_active_in_training():
    model = FinalNetwork(G.CIFAR10, C=4, num_classes=3, layers=2, auxiliary=False)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
    variables = model.init(RNGS, x, train=False)
    eval_fn = jax.jit(lambda v, p: model.apply(v, x, train=False, drop_prob=p))
    np.testing.assert_array_equal(eval_fn(variables, 0.0), eval_fn(variables, 0.9))
    train_fn = jax.jit(
        lambda v, p, k: model.apply(
            v, x, train=True, drop_prob=p, rngs={"drop_path": k}, mutable=["batch_stats"]
        )[0]
    )
    a = train_fn(variables, 0.5, jax.random.PRNGKey(3))
    b = train_fn(variables, 0.5, jax.random.PRNGKey(4))
    c = train_fn(variables, 0.0, jax.random.PRNGKey(3))
    d = train_fn(variables, 0.0, jax.random.PRNGKey(4))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(c, d, rtol=1e-6)


def test_imagenet_variant_size_and_outputs():
    model = FinalNetwork(G.DARTS_V2, C=48, num_classes=1000, layers=14, imagenet=True)
    variables = _shapes(model, (1, 224, 224, 3))
    # The paper's DARTS (second order) ImageNet model: 4.7 M weights.
    assert round(count_params_excluding_aux(variables["params"]) / 1e6, 1) == 4.7
    assert "bn2" not in variables["params"]["aux_head"]  # the official head has no BN there
    (logits, aux), _ = jax.eval_shape(
        lambda v: model.apply(
            v,
            jnp.zeros((2, 224, 224, 3)),
            train=True,
            drop_prob=0.0,
            rngs={"drop_path": RNGS["drop_path"]},
            mutable=["batch_stats"],
        ),
        variables,
    )
    assert logits.shape == (2, 1000) and aux.shape == (2, 1000)


def test_drop_path_mask_is_the_same_on_any_batch_axis():
    """Cells run (C, N, H, W): the mask for batch axis 1 equals the NHWC one, sample by sample."""
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2, 3, 3)) + 5.0
    key = jax.random.PRNGKey(3)
    nhwc = drop_path(x, jnp.float32(0.5), key)
    channels_first = drop_path(jnp.moveaxis(x, 3, 0), jnp.float32(0.5), key, batch_axis=1)
    np.testing.assert_array_equal(jnp.moveaxis(channels_first, 0, 3), nhwc)
    assert 0 < int((nhwc[:, 0, 0, 0] == 0).sum()) < 6  # some samples dropped, some kept
