"""The final-training step: loss with the aux head, drop-path schedule, optimizer, eval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import genotypes as G
from darts_jax import optim
from darts_jax.final_model import FinalNetwork
from darts_jax.final_step import (
    FinalHyper,
    create_state,
    drop_prob_at,
    make_eval_step,
    make_train_step,
)

# 24x24 input, 3 cells: the aux head (after cell 2) sees 6x6, the smallest it takes.
SHAPE = (4, 24, 24, 3)


def _setup(auxiliary=True, **hyper):
    model = FinalNetwork(G.DARTS_V2, C=4, num_classes=10, layers=3, auxiliary=auxiliary)
    schedule = optim.epoch_cosine_schedule(0.025, 0.0, 4, 2)
    tx = optim.weight_optimizer(schedule, 0.9, 3e-4, 5.0)
    state = create_state(model, jax.random.PRNGKey(0), (1, *SHAPE[1:]), tx)
    augment = lambda rng, x: x.astype(jnp.float32) / 255.0  # noqa: E731
    step = make_train_step(
        model, tx, schedule, augment, FinalHyper(steps_per_epoch=2, epochs=4, **hyper)
    )
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.integers(0, 256, SHAPE, dtype=np.uint8),
        "labels": rng.integers(0, 10, SHAPE[:1]).astype(np.int32),
    }
    return model, state, jax.jit(step), batch


def test_drop_prob_follows_pt_darts_epoch_schedule():
    hyper = FinalHyper(steps_per_epoch=10, epochs=4, drop_path_prob=0.2)
    got = [float(drop_prob_at(jnp.asarray(s), hyper)) for s in (0, 9, 10, 25, 39, 1000)]
    np.testing.assert_allclose(got, [0.0, 0.0, 0.05, 0.1, 0.15, 0.15], rtol=1e-6)


def test_train_step_with_aux_head_updates_everything():
    _, state, step, batch = _setup(aux_weight=0.4)
    new, metrics = step(state, batch)
    m = jax.device_get(metrics)
    assert int(new.step) == 1
    assert np.isfinite(m["loss"]) and m["aux_loss"] > 0 and m["n"] == 4
    assert float(m["lr"]) == pytest.approx(0.025 * 0.5 * (1 + np.cos(np.pi / 4)))
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    assert all(jax.tree_util.tree_leaves(changed))  # the aux head's weights too
    stats_changed = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), state.batch_stats, new.batch_stats
    )
    assert all(jax.tree_util.tree_leaves(stats_changed))


def test_aux_weight_zero_without_head_and_label_smoothing_raises_loss():
    _, state, step, batch = _setup(auxiliary=False, aux_weight=0.0)
    _, m = step(state, batch)
    assert float(m["aux_loss"]) == 0.0
    _, state_s, step_s, _ = _setup(auxiliary=False, aux_weight=0.0, label_smoothing=0.5)
    _, m_s = step_s(state_s, batch)
    assert float(m_s["loss"]) != pytest.approx(float(m["loss"]))


def test_aux_head_rejects_too_small_features():
    model = FinalNetwork(G.DARTS_V2, C=4, num_classes=10, layers=3)
    with pytest.raises(ValueError, match="--aux_weight 0"):
        jax.eval_shape(
            lambda: model.init(
                {"params": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(0)},
                jnp.zeros((1, 16, 16, 3)),
                train=False,
            )
        )


def test_eval_step_masks_padding():
    model, state, _, batch = _setup(auxiliary=False)
    eval_fn = make_eval_step(model, lambda rng, x: x.astype(jnp.float32) / 255.0)
    idx = np.array([0, 1, 2, 3], np.int32)
    full = eval_fn(state, batch["images"], batch["labels"], idx, np.ones(4, np.float32), None)
    half = eval_fn(
        state, batch["images"], batch["labels"], idx, np.array([1, 1, 0, 0], np.float32), None
    )
    first_two = eval_fn(
        state,
        batch["images"][:2],
        batch["labels"][:2],
        np.array([0, 1, 0, 1], np.int32),
        np.array([1, 1, 0, 0], np.float32),
        None,
    )
    assert float(full["loss"]) > float(half["loss"]) > 0
    np.testing.assert_allclose(float(half["loss"]), float(first_two["loss"]), rtol=1e-5)
