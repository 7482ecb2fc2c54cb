"""The final-training state and its jitted train and evaluation steps.

One state pytree (step, weights, BN statistics, SGD state, RNG); the train step
is pure ``(state, batch) -> (state, metrics)`` with the loss CE + aux_weight *
CE_aux, drop path whose probability grows with the epoch (pt.darts:
``drop_path_prob * epoch / epochs``, epoch counted from 0) and SGD with
momentum, coupled weight decay and gradient clipping from ``optim``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from darts_jax import runs
from darts_jax.metrics import classification_metrics, masked_sums


class FinalState(NamedTuple):
    """Everything a final-training step reads and writes."""

    step: jax.Array  # weight steps taken so far
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array


class FinalHyper(NamedTuple):
    """Static hyper-parameters of the train step."""

    steps_per_epoch: int
    epochs: int
    drop_path_prob: float = 0.2
    aux_weight: float = 0.4
    label_smoothing: float = 0.0


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
    """Variables of a FinalNetwork without compiling its init (eager, op by op).

    Tracing a 20-cell init under jit costs a long compile for a one-off call;
    the ops' initialisers and BN skip all work that init does not need.
    """
    x = jnp.zeros(input_shape, jnp.float32)
    return model.init({"params": rng, "drop_path": rng}, x, train=False)


def create_state(
    model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...], tx: optax.GradientTransformation
) -> FinalState:
    """The initial state: pt.darts's weight init and a fresh optimizer."""
    k_params, k_state = jax.random.split(rng)
    variables = init_variables(model, k_params, input_shape)
    params = variables["params"]
    return FinalState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        rng=k_state,
    )


def drop_prob_at(step: jax.Array, hyper: FinalHyper) -> jax.Array:
    """pt.darts's drop-path probability for the epoch holding ``step``."""
    epoch = jnp.minimum(step // hyper.steps_per_epoch, hyper.epochs - 1)
    return hyper.drop_path_prob * epoch.astype(jnp.float32) / hyper.epochs


def _smoothed_ce(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    if smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    augment: Callable[[jax.Array, jax.Array], jax.Array],
    hyper: FinalHyper,
) -> Callable:
    """Returns the pure step ``(state, batch) -> (state, metrics)`` (not yet jitted).

    ``batch``: 'images' (raw uint8 NHWC) and 'labels'; ``augment(rng, images)``
    runs on the device. Metrics: loss (the main head's CE), top1, top5, n, lr,
    drop_prob, and aux_loss when the network has an auxiliary head.
    """

    def step(state: FinalState, batch) -> tuple[FinalState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        k_aug, k_drop = jax.random.split(rng)
        images = augment(k_aug, batch["images"])
        labels = batch["labels"]
        drop_prob = drop_prob_at(state.step, hyper)

        def loss_fn(params):
            out, mutated = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                drop_prob=drop_prob,
                rngs={"drop_path": k_drop},
                mutable=["batch_stats"],
            )
            logits, aux_logits = out if isinstance(out, tuple) else (out, None)
            loss = _smoothed_ce(logits, labels, hyper.label_smoothing)
            aux_loss = (
                _smoothed_ce(aux_logits, labels, hyper.label_smoothing)
                if aux_logits is not None
                else jnp.zeros(())
            )
            total = loss + hyper.aux_weight * aux_loss
            return total, (loss, aux_loss, logits, mutated["batch_stats"])

        (_, (loss, aux_loss, logits, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = classification_metrics(logits, labels, loss)
        metrics.update(aux_loss=aux_loss, lr=lr_schedule(state.step), drop_prob=drop_prob)
        new_state = FinalState(state.step + 1, params, batch_stats, opt_state, state.rng)
        return new_state, metrics

    return step


def make_eval_step(model: nn.Module, augment: Callable, par=None) -> Callable:
    """Jitted ``(state, images_all, labels_all, idx, mask, rng) -> sums`` in eval mode,
    on device-resident data (the signature ``runs.evaluate`` drives); on the mesh
    of ``par`` (a ``parallel.Parallel``) when given."""

    def fn(state, images_all, labels_all, idx, mask, rng):
        images, labels = images_all[idx], labels_all[idx]
        logits = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            augment(rng, images),
            train=False,
        )
        return masked_sums(logits, labels, mask)

    return jax.jit(fn) if par is None else runs.jit_eval(fn, par)
