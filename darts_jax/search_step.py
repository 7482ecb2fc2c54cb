"""The search state and the one jitted search step (alpha step, then weight step)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from darts_jax import architect, optim, search_passes
from darts_jax.metrics import classification_metrics, cross_entropy
from darts_jax.search_model import SearchNetwork, init_alphas, init_variables


class SearchState(NamedTuple):
    """Everything a search step reads and writes."""

    step: jax.Array  # weight steps taken so far
    params: Any
    batch_stats: Any
    alphas: dict[str, jax.Array]
    w_opt_state: optax.OptState
    a_opt_state: optax.OptState
    rng: jax.Array


class Hyper(NamedTuple):
    """Static hyper-parameters of the step."""

    alpha_grad: str = "second"
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    # Second order and fd: run the loss-gradient passes as one scanned body
    # (``search_passes``: a smaller program, less memory); False writes them out.
    scan_passes: bool = True
    # The cells the exact Hessian-vector product's network rematerialises
    # (scanned second order; ``search_model.hvp_remat_cells_for``); None: the
    # model's own ``remat_cells``.
    hvp_remat_cells: tuple[int, ...] | None = None


def make_loss_fn(model: SearchNetwork) -> Callable:
    """Training-mode loss: (params, alphas, batch_stats, x, y) -> (loss, (logits, new_stats))."""

    def loss_fn(params, alphas, batch_stats, images, labels):
        logits, mutated = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            alphas,
            train=True,
            mutable=["batch_stats"],
        )
        return cross_entropy(logits, labels), (logits, mutated["batch_stats"])

    return loss_fn


def create_state(
    model: SearchNetwork,
    rng: jax.Array,
    input_shape: tuple[int, ...],
    w_tx: optax.GradientTransformation,
    a_tx: optax.GradientTransformation,
) -> SearchState:
    """Initial state: pt.darts's weight init, alphas 1e-3 * N(0, 1), fresh optimizers."""
    k_alpha, k_params, k_state = jax.random.split(rng, 3)
    alphas = init_alphas(k_alpha, model.n_nodes)
    variables = init_variables(model, k_params, input_shape, alphas)
    params = variables["params"]
    return SearchState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        alphas=alphas,
        w_opt_state=w_tx.init(params),
        a_opt_state=a_tx.init(alphas),
        rng=k_state,
    )


def make_train_step(
    model: SearchNetwork,
    w_tx: optax.GradientTransformation,
    a_tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    augment: Callable[[jax.Array, jax.Array], jax.Array],
    hyper: Hyper | None = None,
) -> Callable:
    """Returns the pure step ``(state, batch) -> (state, metrics)`` (not yet jitted).

    ``batch``: 'train_images', 'train_labels', 'val_images', 'val_labels', raw
    uint8 NHWC images; ``augment(rng, images) -> float images`` runs on device.
    """
    hyper = hyper or Hyper()
    if hyper.alpha_grad not in architect.MODES:
        raise ValueError(f"alpha_grad must be one of {architect.MODES}, got {hyper.alpha_grad!r}")
    loss_fn = make_loss_fn(model)
    hvp_loss_fn, hvp_cells = loss_fn, hyper.hvp_remat_cells
    if hvp_cells is not None and tuple(hvp_cells) != tuple(model.remat_cells):
        hvp_loss_fn = make_loss_fn(model.clone(remat_cells=tuple(hvp_cells)))
    if hyper.scan_passes and hyper.alpha_grad != "first":
        passes = functools.partial(search_passes.scanned, hvp_loss_fn=hvp_loss_fn)
    else:
        passes = search_passes.written_out

    def step(state: SearchState, batch) -> tuple[SearchState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        k_train, k_val = jax.random.split(rng)
        train_batch = (augment(k_train, batch["train_images"]), batch["train_labels"])
        val_batch = (augment(k_val, batch["val_images"]), batch["val_labels"])
        lr = lr_schedule(state.step)

        virtual = architect.VirtualStep(
            xi=lr,
            momentum_buffer=optim.momentum_buffer(state.w_opt_state),
            momentum=hyper.w_momentum,
            weight_decay=hyper.w_weight_decay,
        )
        r = passes(
            hyper.alpha_grad,
            loss_fn,
            a_tx,
            state.params,
            state.alphas,
            state.batch_stats,
            state.a_opt_state,
            train_batch,
            val_batch,
            virtual,
            model.num_classes,
        )
        w_updates, w_opt_state = w_tx.update(r.w_grads, state.w_opt_state, state.params)
        params = optax.apply_updates(state.params, w_updates)

        metrics = classification_metrics(r.logits, train_batch[1], r.loss)
        metrics["lr"] = lr
        metrics["alpha_val_loss"] = r.val_loss
        metrics["w_grad_norm"] = optax.tree.norm(r.w_grads)
        new_state = SearchState(
            step=state.step + 1,
            params=params,
            batch_stats=r.batch_stats,
            alphas=r.alphas,
            w_opt_state=w_opt_state,
            a_opt_state=r.a_opt_state,
            rng=state.rng,
        )
        return new_state, metrics

    return step
