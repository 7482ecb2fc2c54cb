"""The two optimizers of a DARTS search, built from optax, and pt.darts's schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def epoch_cosine_schedule(
    lr: float, lr_min: float, epochs: int, steps_per_epoch: int
) -> optax.Schedule:
    """Cosine annealing from ``lr`` to ``lr_min``, constant within an epoch.

    pt.darts steps torch's CosineAnnealingLR at the start of every epoch (old
    PyTorch semantics), so epoch e uses the value at T_cur = e + 1: epoch 0
    already uses the second value and the last epoch uses ``lr_min``.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs ({epochs}) and steps_per_epoch ({steps_per_epoch}) must be >= 1")

    def schedule(count):
        t_cur = jnp.minimum(count // steps_per_epoch + 1, epochs)
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * t_cur / epochs))

    return schedule


def epoch_step_schedule(lr: float, gamma: float, steps_per_epoch: int) -> optax.Schedule:
    """The official ImageNet schedule: ``lr * gamma ** (epoch + 1)``, stepped per epoch
    (StepLR(period 1) stepped at the start of every epoch, as the official script does)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return lambda count: lr * gamma ** (count // steps_per_epoch + 1)


def clip_by_global_norm_like_torch(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by min(1, max_norm / (norm + 1e-6)).

    optax.clip_by_global_norm scales by max_norm / norm (no 1e-6), which differs
    from PyTorch by ~2e-7 relative whenever clipping is active; the parity tests
    hold us to 1e-10 in float64.
    """

    def update(updates, state, params=None):
        del params
        coef = jnp.minimum(max_norm / (optax.tree.norm(updates) + 1e-6), 1.0)
        return jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def weight_optimizer(
    schedule: optax.Schedule, momentum: float, weight_decay: float, grad_clip: float
) -> optax.GradientTransformation:
    """torch SGD(momentum, coupled weight_decay) after clip_grad_norm_(grad_clip)."""
    return optax.chain(
        clip_by_global_norm_like_torch(grad_clip),
        optax.add_decayed_weights(weight_decay),
        optax.sgd(schedule, momentum=momentum),
    )


def alpha_optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
    """torch Adam(lr, betas=(0.5, 0.999), weight_decay) with coupled (L2) decay."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.adam(lr, b1=0.5, b2=0.999, eps=1e-8),
    )


def momentum_buffer(weight_opt_state):
    """The SGD momentum buffer v inside ``weight_optimizer``'s state."""
    return optax.tree_utils.tree_get(weight_opt_state, "trace")
