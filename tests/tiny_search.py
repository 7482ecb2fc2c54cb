"""Tiny search problems several test modules share (shared so compiles are cached)."""

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import optim
from darts_jax.search_model import SearchNetwork, init_alphas, init_variables
from darts_jax.search_step import Hyper, create_state, make_loss_fn, make_train_step

tree_map = jax.tree_util.tree_map


def step_case(order, dtype, scan_passes=True, layers=3, hvp_remat_cells=None):
    """(step, state, batch): a search step on a 2-node supernet, batch 8 of 8x8x1."""
    model = SearchNetwork(C=4, num_classes=10, layers=layers, n_nodes=2)
    schedule = optim.epoch_cosine_schedule(0.025, 0.001, 2, 4)
    w_tx = optim.weight_optimizer(schedule, 0.9, 3e-4, 5.0)
    a_tx = optim.alpha_optimizer(3e-4, 1e-3)
    state = create_state(model, jax.random.PRNGKey(0), (8, 8, 8, 1), w_tx, a_tx)
    state = tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
    )
    augment = lambda rng, x: x.astype(dtype) / 255.0  # noqa: E731
    rng = np.random.default_rng(0)
    batch = {
        "train_images": rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
        "val_images": rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 8).astype(np.int32),
        "val_labels": rng.integers(0, 10, 8).astype(np.int32),
    }
    hyper = Hyper(order, scan_passes=scan_passes, hvp_remat_cells=hvp_remat_cells)
    return make_train_step(model, w_tx, a_tx, schedule, augment, hyper), state, batch


def alpha_problem():
    """(loss_fn, params, alphas, stats, train, val, momentum): a one-cell, two-node
    supernet in float64, non-uniform alphas, a nonzero momentum buffer; small to compile."""
    with jax.enable_x64(True):
        model = SearchNetwork(C=4, num_classes=3, layers=1, n_nodes=2)
        alphas = init_alphas(jax.random.PRNGKey(0), n_nodes=2)
        alphas = tree_map(lambda a: 100.0 * a.astype(jnp.float64), alphas)  # not all-uniform
        variables = init_variables(model, jax.random.PRNGKey(1), (2, 8, 8, 1), alphas)
        params = tree_map(lambda p: p.astype(jnp.float64), variables["params"])
        stats = tree_map(lambda p: p.astype(jnp.float64), variables["batch_stats"])
        rng = np.random.default_rng(0)
        train = (jnp.asarray(rng.normal(size=(3, 8, 8, 1))), jnp.asarray([0, 1, 2]))
        val = (jnp.asarray(rng.normal(size=(3, 8, 8, 1))), jnp.asarray([2, 2, 1]))
        momentum = tree_map(lambda p: 0.1 * jnp.asarray(rng.normal(size=p.shape)), params)
    return make_loss_fn(model), params, alphas, stats, train, val, momentum
