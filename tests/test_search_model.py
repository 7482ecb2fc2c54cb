import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from darts_jax import architect, ops, search_model
from darts_jax.genotypes import PRIMITIVES
from darts_jax.search_model import (
    AUTO_HVP_MIN_STATE_ELEMENTS,
    MixedEdges,
    SearchNetwork,
    cell_groups,
    count_params,
    early_cells,
    first_stage_cells,
    hvp_remat_cells_for,
    init_alphas,
    init_variables,
    remat_cells_for,
    resolve_remat,
)
from darts_jax.search_step import make_loss_fn


def _bn(y):
    mean = y.mean(axis=(0, 1, 2))
    return (y - mean) / jnp.sqrt(y.var(axis=(0, 1, 2)) + 1e-5)


def _dw(x, kernel, stride, dilation):
    k = kernel.shape[0]
    pad = dilation * (k - 1) // 2
    return lax.conv_general_dilated(
        x,
        kernel[:, :, None, :],
        (stride, stride),
        ((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _block(p, prefix, x, stride, dilation):
    return _bn(
        _dw(jax.nn.relu(x), p[f"{prefix}_dw"][:, :, 0, 0], stride, dilation)
        @ p[f"{prefix}_pw"][0, 0]
    )


def _expected(op, p, x, stride):
    """Each op written out independently on a single edge (M = S = 1)."""
    if op == "max_pool_3x3":
        return _bn(
            lax.reduce_window(
                x,
                -jnp.inf,
                lax.max,
                (1, 3, 3, 1),
                (1, stride, stride, 1),
                ((0, 0), (1, 1), (1, 1), (0, 0)),
            )
        )
    if op == "avg_pool_3x3":
        s = lax.reduce_window(
            x, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )
        n = lax.reduce_window(
            jnp.ones_like(x),
            0.0,
            lax.add,
            (1, 3, 3, 1),
            (1, stride, stride, 1),
            ((0, 0), (1, 1), (1, 1), (0, 0)),
        )
        return _bn(s / n)
    if op == "skip_connect":
        if stride == 1:
            return x
        r = jax.nn.relu(x)
        y = jnp.concatenate(
            [
                r[:, ::2, ::2] @ p["skip_connect_fr1"][0, 0],
                r[:, 1::2, 1::2] @ p["skip_connect_fr2"][0, 0],
            ],
            -1,
        )
        return _bn(y)
    if op.startswith("sep_conv"):
        y = _block(p, f"{op}_1", x, stride, 1)
        return _block(p, f"{op}_2", y, 1, 1)
    if op.startswith("dil_conv"):
        return _block(p, op, x, stride, 2)
    assert op == "none"
    return jnp.zeros_like(x[:, ::stride, ::stride])


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_with_one_hot_weights_equals_that_op(stride):
    x_nhwc = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
    x_scnhw = jnp.transpose(x_nhwc, (3, 0, 1, 2))[None]  # one source, features first
    mixed = MixedEdges(n_targets=1, stride=stride)
    weights = jnp.zeros((1, 1, len(PRIMITIVES)))
    variables = mixed.init(jax.random.PRNGKey(1), x_scnhw, weights, train=True)
    apply = jax.jit(
        lambda w: mixed.apply(variables, x_scnhw, w, train=True, mutable=["batch_stats"])[0]
    )
    for j, op in enumerate(PRIMITIVES):
        out = apply(jax.nn.one_hot(j, len(PRIMITIVES))[None, None])
        want = _expected(op, variables["params"], x_nhwc, stride)
        assert out.shape == (1, 1, 4, 2, 8 // stride, 8 // stride), op
        got_nhwc = jnp.transpose(out[0, 0], (1, 2, 3, 0))
        np.testing.assert_allclose(got_nhwc, want, rtol=2e-4, atol=2e-5, err_msg=op)


def test_parameter_count_matches_pt_darts_at_default_config():
    model = SearchNetwork(C=16, num_classes=10, layers=8)
    alphas = init_alphas(jax.random.PRNGKey(0))
    variables = init_variables(model, jax.random.PRNGKey(1), (64, 32, 32, 3), alphas)
    assert count_params(variables["params"]) == 1_930_618


def test_forward_shapes_and_bad_alphas():
    model = SearchNetwork(C=4, num_classes=7, layers=3, n_nodes=2)
    alphas = init_alphas(jax.random.PRNGKey(0), n_nodes=2)
    assert alphas["normal"].shape == (5, 8)
    assert float(jnp.abs(alphas["normal"]).max()) < 1e-2
    variables = init_variables(model, jax.random.PRNGKey(1), (2, 8, 8, 1), alphas)
    x = jnp.ones((3, 8, 8, 1))
    logits = model.apply(variables, x, alphas, train=False)
    assert logits.shape == (3, 7)
    with pytest.raises(ValueError, match="must have shape"):
        model.apply(
            variables, x, {"normal": jnp.zeros((14, 8)), "reduce": jnp.zeros((14, 8))}, train=False
        )
    with pytest.raises(ValueError, match="keys"):
        model.apply(variables, x, {"normal": alphas["normal"]}, train=False)


@pytest.mark.parametrize(
    "module, name, value",
    [(search_model, "ROLLED_MAX_ELEMENTS", 0), (ops, "DEPTHWISE_IMPL", "grouped")],
    ids=["unrolled-node-scan", "grouped-depthwise"],
)
def test_network_formulations_agree(monkeypatch, module, name, value):
    """Small cells loop over source nodes, large ones unroll (without the loop's
    padding slots); depthwise convs run as matrix products on the CPU, grouped on
    GPUs: same loss, grads, stats, and eval-mode logits from running statistics."""
    model = SearchNetwork(C=4, num_classes=3, layers=1, n_nodes=3)
    alphas = jax.tree_util.tree_map(lambda a: 3e3 * a, init_alphas(jax.random.PRNGKey(0), 3))
    variables = init_variables(model, jax.random.PRNGKey(1), (2, 8, 8, 1), alphas)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 1))

    def loss(params, alphas):
        logits, new = model.apply(
            {**variables, "params": params}, x, alphas, train=True, mutable=["batch_stats"]
        )
        return jnp.square(logits).sum(), new

    def run():
        grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        (value, new_stats), grads = jax.jit(grad_fn)(variables["params"], alphas)
        # Eval mode reads the running statistics each step slices out of its edges.
        eval_logits = model.apply({**variables, **new_stats}, x, alphas, train=False)
        return value, new_stats, grads, eval_logits

    default = run()
    monkeypatch.setattr(module, name, value)
    changed = run()
    flat_r, flat_u = jax.tree_util.tree_leaves(default), jax.tree_util.tree_leaves(changed)
    assert len(flat_r) == len(flat_u) > 10
    for r, u in zip(flat_r, flat_u, strict=True):
        np.testing.assert_allclose(r, u, rtol=1e-5, atol=1e-6)


def _gradients(remat_cells: tuple[int, ...], layers: int = 3, **model_kwargs):
    """(grads, hvp, args): the loss, gradients and new BN statistics, the exact
    H v' (float64 arrays in, tiny network, reduction cells included) and their
    arguments."""
    model = SearchNetwork(
        C=4, num_classes=5, layers=layers, n_nodes=2, remat_cells=remat_cells, **model_kwargs
    )
    alphas = init_alphas(jax.random.PRNGKey(0), 2, jnp.float64)
    alphas = jax.tree_util.tree_map(lambda a: 300.0 * a, alphas)
    variables = init_variables(model, jax.random.PRNGKey(1), (4, 8, 8, 3), alphas)
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3), jnp.float64)
    y = jnp.array([0, 1, 2, 3])
    loss_fn, stats = make_loss_fn(model), variables["batch_stats"]

    def grads(params, alphas):
        value_and_grad = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        return value_and_grad(params, alphas, stats, x, y)

    def hvp(params, alphas):
        return architect.alpha_hvp(loss_fn, params, alphas, stats, (x, y), params)

    return grads, hvp, (variables["params"], alphas)


def test_rematerialised_cells_plan_less_memory():
    """``remat_cells`` (cells 0 and 1 rematerialised, the last, a reduction cell,
    not): XLA plans less memory for the gradient. That they change no value is
    checked with the scanned cells below."""
    plans = []
    with jax.enable_x64():
        for remat_cells in ((), early_cells(3)):
            grads, _, args = _gradients(remat_cells)
            compiled = jax.jit(grads).lower(*args).compile()
            plans.append(compiled.memory_analysis().temp_size_in_bytes)
    if jax.default_backend() == "cpu":
        # at the default config one gradient pass plans 3.2 GB against 8.2 GB (BENCHMARKS.md)
        assert plans[1] < 0.95 * plans[0], plans


def test_early_cells_stop_at_the_last_reduction_cell():
    assert early_cells(8) == (0, 1, 2, 3, 4)  # reduction cells 2 and 5
    assert early_cells(5) == (0, 1, 2)  # reduction cells 1 and 3
    assert early_cells(3) == (0, 1)
    assert remat_cells_for("cells", 8) == early_cells(8) and remat_cells_for("none", 8) == ()
    assert first_stage_cells(8) == (0, 1) and first_stage_cells(5) == (0,)
    assert remat_cells_for("hvp", 8) == () and hvp_remat_cells_for("hvp", 8) == (0, 1)
    assert (
        hvp_remat_cells_for("cells", 8) == early_cells(8) and hvp_remat_cells_for("none", 8) == ()
    )
    with pytest.raises(ValueError, match="unknown remat mode .all.; choose one of"):
        hvp_remat_cells_for("all", 8)
    with pytest.raises(ValueError, match="unknown remat mode .all.; choose one of"):
        remat_cells_for("all", 8)
    with pytest.raises(ValueError, match="'auto' depends on the platform"):
        hvp_remat_cells_for("auto", 8)


def _devices(platform: str, count: int = 1):
    return [types.SimpleNamespace(platform=platform)] * count


def test_auto_remat_recomputes_inside_h_v_only_for_large_networks_on_the_cpu():
    default = dict(batch_size=64, image_size=32, C=16)  # 2**20 elements per state
    assert resolve_remat("auto", _devices("cpu"), **default) == "hvp"
    assert resolve_remat("auto", _devices("gpu"), **default) == "none"
    assert resolve_remat("auto", _devices("tpu"), **default) == "none"
    test = dict(batch_size=4, image_size=16, C=4)
    assert resolve_remat("auto", _devices("cpu"), **test) == "none"
    # the threshold is per device: 64 images over 4 devices hold 2**18 each, over 8 half that
    assert AUTO_HVP_MIN_STATE_ELEMENTS == 2**18
    assert resolve_remat("auto", _devices("cpu", 4), **default) == "hvp"
    assert resolve_remat("auto", _devices("cpu", 8), **default) == "none"
    for mode in ("none", "cells", "hvp"):  # explicit modes stay as they are
        assert resolve_remat(mode, _devices("gpu"), **test) == mode
        assert resolve_remat(mode, _devices("cpu"), **default) == mode
    with pytest.raises(ValueError, match="unknown remat mode .all.; choose one of"):
        resolve_remat("all", _devices("cpu"), **default)
    model = SearchNetwork(C=4, num_classes=5, layers=3, n_nodes=2, remat_cells=(3,))
    alphas = init_alphas(jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match=r"remat_cells \(3,\) must be cell indices in 0..2"):
        init_variables(model, jax.random.PRNGKey(1), (2, 8, 8, 3), alphas)


def test_cell_groups_are_runs_of_normal_cells():
    assert cell_groups(8) == ((0, 1), (2,), (3, 4), (5,), (6, 7))
    assert cell_groups(8, early_cells(8)) == cell_groups(8)
    assert cell_groups(8, (0, 3)) == ((0,), (1,), (2,), (3,), (4,), (5,), (6, 7))
    assert cell_groups(5) == ((0,), (1,), (2,), (3,), (4,))
    assert cell_groups(9) == ((0, 1, 2), (3,), (4, 5), (6,), (7, 8))


def test_scanned_cells_change_nothing():
    """Normal cells of a stage run as one loop (``scan_cells``, the default): loss,
    gradients, new BN statistics and H v' equal the cells run one by one without
    rematerialisation, so neither changes a value (7 layers, cells 0-3
    rematerialised: a reduction cell, a normal cell alone, and a pair on the stem
    scanned, whose 1 x C channels are zero-padded to the cells' 2 x C into the
    loop; a plain pair after the second reduction cell)."""
    kwargs = {"layers": 7, "stem_multiplier": 1}
    assert cell_groups(7, early_cells(7)) == ((0, 1), (2,), (3,), (4,), (5, 6))
    results = []
    with jax.enable_x64():
        for remat_cells, scan_cells in (((), False), (early_cells(7), True)):
            grads, hvp, args = _gradients(remat_cells, scan_cells=scan_cells, **kwargs)
            results.append((jax.jit(grads)(*args), jax.jit(hvp)(*args)))
    one_by_one, scanned = (jax.tree_util.tree_leaves(r) for r in results)
    assert len(one_by_one) == len(scanned) > 200
    for want, got in zip(one_by_one, scanned, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_scanned_cells_of_three_and_after_a_wide_stem():
    """Forward only, 9 layers: a stage of three normal cells (the third's preproc0
    runs inside the loop) and the stem wider than the cells' outputs (3C against
    2C: the first cell runs before the loop). Training mode (loss, new BN
    statistics) and eval mode equal the cells run one by one."""
    alphas = jax.tree_util.tree_map(lambda a: 300.0 * a, init_alphas(jax.random.PRNGKey(0), 2))
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
    results = []
    for scan_cells in (False, True):
        model = SearchNetwork(C=4, num_classes=5, layers=9, n_nodes=2, scan_cells=scan_cells)
        variables = init_variables(model, jax.random.PRNGKey(1), x.shape, alphas)

        def run(variables, model=model):
            logits, new = model.apply(variables, x, alphas, train=True, mutable=["batch_stats"])
            return logits, new, model.apply({**variables, **new}, x, alphas, train=False)

        results.append(jax.tree_util.tree_leaves(jax.jit(run)(variables)))
    assert len(results[0]) == len(results[1]) > 100
    for want, got in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in its equations."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_shared_ops_are_weighted_per_target_without_a_reduction():
    """Pools and the identity run once per source and are weighted per target
    (M = 3 targets, S = 2 sources): the values match the ops written out, and the
    input gradient adds the M weighted terms instead of reducing over the leading
    target axis (a reduction XLA:CPU's YNNPACK runs several times slower)."""
    x_snhwc = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 8, 8, 4))
    x_scnhw = jnp.transpose(x_snhwc, (0, 4, 1, 2, 3))
    shared_ops = ["max_pool_3x3", "avg_pool_3x3", "skip_connect"]
    rng = np.random.default_rng(0)
    weights = np.zeros((3, 2, len(PRIMITIVES)), np.float32)
    for op in shared_ops:
        weights[:, :, PRIMITIVES.index(op)] = rng.uniform(0.1, 1.0, (3, 2))
    mixed = MixedEdges(n_targets=3, stride=1)
    variables = mixed.init(jax.random.PRNGKey(1), x_scnhw, weights, train=True)

    def apply(x):
        return mixed.apply(variables, x, weights, train=True, mutable=["batch_stats"])[0]

    out = jax.jit(apply)(x_scnhw)
    assert out.shape == (3, 2, 4, 2, 8, 8)
    for m in range(3):
        for s in range(2):
            want = sum(
                weights[m, s, PRIMITIVES.index(op)] * _expected(op, None, x_snhwc[s], 1)
                for op in shared_ops
            )
            got = jnp.transpose(out[m, s], (1, 2, 3, 0))
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=f"{m}, {s}")

    gradient = jax.make_jaxpr(jax.grad(lambda x: apply(x).sum()))(x_scnhw)
    over_targets = [
        eqn
        for eqn in _equations(gradient.jaxpr)
        if eqn.primitive.name == "reduce_sum"
        and 0 in eqn.params["axes"]
        and eqn.invars[0].aval.shape[:1] == (3,)
        and eqn.outvars[0].aval.ndim > 0  # not the loss's sum
    ]
    assert not over_targets, over_targets
