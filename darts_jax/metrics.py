"""Loss and accuracy metrics, computed on device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Number of samples whose label is among the k largest logits."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.sum(jnp.any(top == labels[:, None], axis=-1))


def classification_metrics(logits: jax.Array, labels: jax.Array, loss: jax.Array) -> dict:
    """Per-batch loss, top-1 and top-5 accuracy (fractions) and the batch size."""
    n = labels.shape[0]
    return {
        "loss": loss,
        "top1": topk_correct(logits, labels, 1) / n,
        "top5": topk_correct(logits, labels, 5) / n,
        "n": jnp.asarray(n, jnp.float32),
    }
