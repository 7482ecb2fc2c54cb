import jax.numpy as jnp

from darts_jax.metrics import classification_metrics, masked_sums


def test_masked_sums_ignore_padding_and_count_topk():
    logits = jnp.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [0.0, 0.0, 9.0]])
    labels = jnp.array([0, 2, 0])
    sums = masked_sums(logits, labels, jnp.array([1.0, 1.0, 0.0]))
    assert float(sums["top1"]) == 1.0 and float(sums["top5"]) == 2.0
    assert float(sums["loss"]) > 0


def test_classification_metrics_fractions():
    logits = jnp.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    m = classification_metrics(logits, jnp.array([0, 2]), jnp.float32(0.5))
    assert float(m["top1"]) == 0.5 and float(m["top5"]) == 1.0 and float(m["n"]) == 2
