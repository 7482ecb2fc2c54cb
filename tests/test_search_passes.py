"""The scanned gradient passes equal the written-out step, for every alpha gradient mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_search import alpha_problem, step_case

from darts_jax import architect, optim, search_model, search_passes
from darts_jax.search_step import SearchState

tree_map = jax.tree_util.tree_map


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


@pytest.fixture(scope="module")
def problem():
    """``tiny_search.alpha_problem`` plus the alpha optimizer, one Adam step in."""
    loss_fn, params, alphas, stats, train, val, momentum = alpha_problem()
    with jax.enable_x64(True):
        a_tx = optim.alpha_optimizer(3e-4, 1e-3)
        a_opt_state = a_tx.init(alphas)
        a_opt_state = a_tx.update(tree_map(jnp.ones_like, alphas), a_opt_state, alphas)[1]
    return loss_fn, a_tx, params, alphas, stats, a_opt_state, train, val, momentum


@pytest.mark.parametrize("mode", architect.MODES)
def test_scanned_passes_equal_written_out(problem, mode):
    loss_fn, a_tx, params, alphas, stats, a_opt_state, train, val, momentum = problem
    with jax.enable_x64(True):
        virtual = architect.VirtualStep(jnp.float64(0.5), momentum, 0.9, 3e-4)

        def run(passes):
            fn = lambda *args: passes(mode, loss_fn, a_tx, *args, virtual, 3)  # noqa: E731
            return jax.jit(fn)(params, alphas, stats, a_opt_state, train, val)

        scanned, written = run(search_passes.scanned), run(search_passes.written_out)
    for field in search_passes.StepResult._fields:
        np.testing.assert_allclose(
            _flat(getattr(scanned, field)),
            _flat(getattr(written, field)),
            rtol=1e-9,
            atol=1e-13,
            err_msg=f"{mode}: {field}",
        )
    # The alpha step really moved the alphas, so the comparison above is not vacuous.
    assert np.abs(_flat(scanned.alphas) - _flat(alphas)).max() > 1e-5


def test_unknown_mode_is_an_error(problem):
    loss_fn, a_tx, params, alphas, stats, a_opt_state, train, val, momentum = problem
    with pytest.raises(ValueError, match="unknown alpha gradient mode 'third'"):
        search_passes.scanned(
            "third", loss_fn, a_tx, params, alphas, stats, a_opt_state, train, val, None, 3
        )


def test_batches_of_different_shapes_are_an_error(problem):
    loss_fn, a_tx, params, alphas, stats, a_opt_state, train, val, momentum = problem
    short_val = (val[0][:2], val[1][:2])
    with pytest.raises(ValueError, match="must have the same shapes"):
        search_passes.scanned(
            "second", loss_fn, a_tx, params, alphas, stats, a_opt_state, train, short_val, None, 3
        )


def test_search_step_scanned_or_written_out_gives_the_same_state():
    """The wiring in ``make_train_step``: both forms of a second-order step, two steps
    (the second with a nonzero momentum buffer), float64."""
    out = {}
    with jax.enable_x64(True):
        for scan in (True, False):
            step, state, batch = step_case("second", jnp.float64, scan_passes=scan, layers=1)
            step = jax.jit(step)
            state, metrics = step(*step(state, batch)[:1], batch)
            out[scan] = (state, metrics)
    assert isinstance(out[True][0], SearchState)
    for a, b in zip(*(jax.tree_util.tree_leaves(out[k]) for k in (True, False)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_hvp_remat_cells_rematerialise_inside_the_product_only(monkeypatch):
    """``Hyper.hvp_remat_cells`` (``--remat hvp``): the exact Hessian-vector product
    runs on a network that recomputes those cells (one traced rule: the product's;
    the gradient passes' network stays plain), and the step's state and metrics
    equal the plain step's (float64)."""
    traced = []
    rematerialised_cell = search_model.rematerialised_cell

    def spy(*args, **kwargs):
        traced.append(args[2])  # the cell's name
        return rematerialised_cell(*args, **kwargs)

    monkeypatch.setattr(search_model, "rematerialised_cell", spy)
    out = {}
    with jax.enable_x64(True):
        for cells in (None, (0,)):
            step, state, batch = step_case("second", jnp.float64, layers=1, hvp_remat_cells=cells)
            out[cells] = jax.jit(step)(state, batch)
            assert traced == ([] if cells is None else ["cell0"])
    for a, b in zip(*(jax.tree_util.tree_leaves(out[k]) for k in out), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
