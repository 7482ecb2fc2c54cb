"""Loss and accuracy metrics, computed on device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def topk_hits(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per sample: 1.0 if its label is among the k largest logits, else 0.0."""
    _, top = jax.lax.top_k(logits, min(k, logits.shape[-1]))
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Number of samples whose label is among the k largest logits."""
    return jnp.sum(topk_hits(logits, labels, k))


def masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Sums of per-sample loss, top-1 and top-5 hits over samples with mask 1
    (padding in the last evaluation batch has mask 0)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "loss": jnp.sum(losses * mask),
        "top1": jnp.sum(topk_hits(logits, labels, 1) * mask),
        "top5": jnp.sum(topk_hits(logits, labels, 5) * mask),
    }


def classification_metrics(logits: jax.Array, labels: jax.Array, loss: jax.Array) -> dict:
    """Per-batch loss, top-1 and top-5 accuracy (fractions) and the batch size."""
    n = labels.shape[0]
    return {
        "loss": loss,
        "top1": topk_correct(logits, labels, 1) / n,
        "top5": topk_correct(logits, labels, 5) / n,
        "n": jnp.asarray(n, jnp.float32),
    }
