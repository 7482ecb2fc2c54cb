"""DARTS operations as pure functions and small Flax modules.

Two layouts: NHWC, (N, H, W, *features), the default; and features first,
(*features, N, H, W), with ``features_first=True``, in which both networks run
everything between stem and classifier. The feature axes may hold several edges at
once, e.g. (M, S, C) for the edges from S source states to M target nodes, so
that one call computes an op for many edges. Features first keeps a channel's
(N, H, W) block contiguous: the depthwise matrix products need no transposes
around them and BN's reductions read contiguous memory (on XLA:CPU, which does
not choose layouts for us, that saves a copy per conv). Ops follow pt.darts:
bias-free convolutions, ReLU before each conv block, BatchNorm after it.
"""

from __future__ import annotations

import functools
import itertools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from darts_jax import remat


def same_padding(kernel_size: int, dilation: int) -> int:
    return dilation * (kernel_size - 1) // 2


def out_size(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded op of the given stride (PyTorch arithmetic)."""
    return (size - 1) // stride + 1


# Which formulation ``depthwise_conv`` uses: "grouped" (one grouped XLA
# convolution: cuDNN's depthwise kernels on GPUs), "matmul" (banded matrix
# products, see ``depthwise_conv_matmul``) or "auto": matmul on the CPU,
# grouped elsewhere. On XLA:CPU the matmul form runs 5-12x faster forward +
# backward at full size and makes whole search steps 4-10x faster at every
# size measured; its bigger program compiles a little slower (BENCHMARKS.md).
# Overridden by the DARTS_JAX_DEPTHWISE variable.
DEPTHWISE_IMPL = os.environ.get("DARTS_JAX_DEPTHWISE", "auto")
_DEPTHWISE_IMPLS = ("auto", "grouped", "matmul")


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, stride: int, dilation: int, features_first: bool = False
) -> jax.Array:
    """Depthwise k x k convolution with 'same' padding, bias-free.

    x: (N, H, W, *F), or (*F, N, H, W) with ``features_first``; kernel: (k, k, *F')
    with F' broadcasting against F, so one input can feed several edges' kernels.
    Returns the broadcast features in x's layout. Runs as ``depthwise_conv_grouped``
    or ``depthwise_conv_matmul`` (``DEPTHWISE_IMPL``).
    """
    impl = DEPTHWISE_IMPL
    if impl not in _DEPTHWISE_IMPLS:
        raise ValueError(f"DARTS_JAX_DEPTHWISE={impl!r}: expected one of {_DEPTHWISE_IMPLS}")
    if impl == "auto":
        impl = "matmul" if jax.default_backend() == "cpu" else "grouped"
    fn = depthwise_conv_matmul if impl == "matmul" else depthwise_conv_grouped
    return fn(x, kernel, stride, dilation, features_first)


def _align_features(
    x: jax.Array, kernel: jax.Array, features_first: bool
) -> tuple[jax.Array, tuple[int, ...], tuple[int, ...]]:
    """x with leading size-1 feature axes added up to the kernel's; returns it, its
    feature shape and the broadcast feature shape."""
    n_feat = max(x.ndim - 3, kernel.ndim - 2)
    ones = (1,) * (n_feat - (x.ndim - 3))
    x = x.reshape(ones + x.shape if features_first else x.shape[:3] + ones + x.shape[3:])
    x_features = x.shape[:n_feat] if features_first else x.shape[3:]
    return x, x_features, jnp.broadcast_shapes(x_features, kernel.shape[2:])


def depthwise_conv_grouped(
    x: jax.Array, kernel: jax.Array, stride: int, dilation: int, features_first: bool = False
) -> jax.Array:
    """``depthwise_conv`` as one grouped XLA convolution: the feature axes are
    flattened into the channel axis and every channel is its own group."""
    k = kernel.shape[0]
    pad = same_padding(k, dilation)
    x, _, features = _align_features(x, kernel, features_first)
    spatial = x.shape[len(features) :] if features_first else x.shape[:3]
    x = jnp.broadcast_to(x, features + spatial if features_first else spatial + features)
    x_flat = x.reshape((-1,) + spatial if features_first else spatial + (-1,))
    k_flat = jnp.broadcast_to(kernel, (k, k) + features).reshape(k, k, 1, -1)
    layout = "CNHW" if features_first else "NHWC"
    y = lax.conv_general_dilated(
        x_flat,
        k_flat,
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=(layout, "HWIO", layout),
        feature_group_count=int(np.prod(features)),
    )
    return y.reshape(features + y.shape[1:] if features_first else y.shape[:3] + features)


@functools.lru_cache(maxsize=128)
def _column_taps(k: int, width: int, stride: int, dilation: int) -> np.ndarray:
    """(k, W, W') 0/1 matrices: tap j of output column v reads input column
    v * stride + j * dilation - pad; taps that fall into the padding are absent."""
    pad = same_padding(k, dilation)
    w_out = out_size(width, stride)
    taps = np.zeros((k, width, w_out), np.float32)
    for j in range(k):
        for v in range(w_out):
            w = v * stride + j * dilation - pad
            if 0 <= w < width:
                taps[j, w, v] = 1.0
    return taps


def _shifted_rows(x: jax.Array, start: int, stride: int, count: int, axis: int) -> jax.Array:
    """Rows start, start + stride, ... (``count`` of them) of x along ``axis``, zero
    where they fall outside x: one slice and one pad of x, not a slice of a
    padded copy (which XLA:CPU materialises once per call)."""
    size = x.shape[axis]
    first = max(0, -(start // stride))  # first row inside x
    end = min(count, (size - 1 - start) // stride + 1)  # one past the last inside x
    if end <= first:
        return jnp.zeros(x.shape[:axis] + (count,) + x.shape[axis + 1 :], x.dtype)
    inside = lax.slice_in_dim(
        x, start + first * stride, start + (end - 1) * stride + 1, stride, axis
    )
    padding = [(0, 0, 0)] * x.ndim
    padding[axis] = (first, count - end, 0)
    return lax.pad(inside, jnp.zeros((), x.dtype), padding)


# Einsum letters of the feature axes (none of n, y, z, w, v, used below).
_FEATURE_LETTERS = "abcdefghijklm"


def depthwise_conv_matmul(
    x: jax.Array, kernel: jax.Array, stride: int, dilation: int, features_first: bool = False
) -> jax.Array:
    """``depthwise_conv`` as one batched matrix product per call.

    Along W, a channel's k taps form a banded (W, W') matrix (stride, dilation
    and zero padding included); the k kernel rows read k row-shifted copies of
    the input, stacked into the contraction, so the product contracts (k, W)
    with the channels as batch axes. XLA:CPU runs this as dense matrix products,
    several times faster than its grouped convolution, and its gradients are
    matrix products too. The product runs features first (an NHWC input is
    transposed around it), because XLA:CPU's own layout for a batch-last product
    is much slower. An input axis of size 1 that the kernel broadcasts (one input
    feeding many edges) stays a free axis of the kernel side, so that input is
    never copied per edge.

    The body is recomputed in the backward pass (``remat``): saving the k
    shifted copies for the kernel gradient would cost k times the input's
    memory.
    """
    k = kernel.shape[0]
    x, x_features, features = _align_features(x, kernel, features_first)
    n_feat = len(features)
    kernel = jnp.broadcast_to(kernel, (k, k) + features)
    spread = [x_size == 1 and size > 1 for x_size, size in zip(x_features, features, strict=True)]
    kept = tuple(s for s, sp in zip(features, spread, strict=True) if not sp)
    x = x.reshape(kept + x.shape[n_feat:] if features_first else x.shape[:3] + kept)
    f_all = _FEATURE_LETTERS[:n_feat]
    f_x = "".join(f for f, sp in zip(f_all, spread, strict=True) if not sp)
    pad = same_padding(k, dilation)
    height, width = x.shape[-2:] if features_first else x.shape[1:3]
    h_out = out_size(height, stride)
    taps = _column_taps(k, width, stride, dilation)

    def conv(x, kernel):
        # Operands in the product's own order, (batch, free, contracted) and
        # (batch, contracted, free), so that XLA copies neither: the shifted rows
        # are stacked next to W, the band is built features first.
        band = jnp.einsum(f"yj{f_all},jwv->{f_all}ywv", kernel, taps.astype(kernel.dtype))
        x_fnhw = x if features_first else jnp.transpose(x, tuple(range(3, x.ndim)) + (0, 1, 2))
        rows_axis = x_fnhw.ndim - 2
        rows = [
            _shifted_rows(x_fnhw, i * dilation - pad, stride, h_out, rows_axis) for i in range(k)
        ]
        rows = jnp.stack(rows, rows_axis + 1)  # (*F_x, N, H', k, W)
        y = jnp.einsum(f"{f_x}nzyw,{f_all}ywv->{f_all}nzv", rows, band)
        if features_first:
            return y
        return jnp.transpose(y, (n_feat, n_feat + 1, n_feat + 2) + tuple(range(n_feat)))

    return remat.recompute_in_backward(conv)(x, kernel)


def pointwise_conv(x: jax.Array, kernel: jax.Array, features_first: bool = False) -> jax.Array:
    """1x1 convolution: contracts the channel axis. kernel: (*F[:-1], C_in, C_out)."""
    if features_first:
        # Kernel first, so the product's output is already (..., O, N, H, W); the
        # pixels flattened into one axis (a free reshape), so that JAX's gradient
        # products are 2-D swaps that XLA folds instead of copying whole activations.
        *features, c, n, h, w = x.shape
        y = jnp.einsum("...co,...cp->...op", kernel, x.reshape(*features, c, n * h * w))
        return y.reshape(*y.shape[:-1], n, h, w)
    return jnp.einsum("nhw...c,...co->nhw...o", x, kernel)


def _pool_window(x: jax.Array, stride: int, features_first: bool):
    """reduce_window's (window, strides, padding) for a 3x3 pool with padding 1."""
    spatial = (x.ndim - 2, x.ndim - 1) if features_first else (1, 2)
    window = tuple(3 if a in spatial else 1 for a in range(x.ndim))
    strides = tuple(stride if a in spatial else 1 for a in range(x.ndim))
    padding = tuple((1, 1) if a in spatial else (0, 0) for a in range(x.ndim))
    return window, strides, padding


def _pool_3x3_shifted(x: jax.Array, stride: int, features_first: bool, combine, fill: float):
    """A 3x3 pool with padding 1 as shifted slices: ``combine`` over the window's
    three rows, then over its three columns (padding ``fill``).

    Used for the stride-1 average pool, whose derivative is then pads and adds
    that XLA fuses, where ``lax.reduce_window``'s is a padded reduce_window. One
    pool's gradient at the default config's first cell (32x32, batch 64, 32
    channels) on XLA:CPU: 25.5 -> 12.7 ms, forward 5.6 -> 3.2 ms (BENCHMARKS.md,
    session 14). The max pool keeps ``reduce_window``: its shifted form ran
    faster alone but saves its intermediate maxima for the gradient (+0.5 GB in
    the default config's Hessian-vector product) and did not make steps faster.
    """
    for axis in (x.ndim - 2, x.ndim - 1) if features_first else (1, 2):
        size = out_size(x.shape[axis], stride)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (1, 1)
        padded = jnp.pad(x, widths, constant_values=fill)
        shifts = [
            lax.slice_in_dim(padded, i, i + stride * (size - 1) + 1, stride, axis) for i in range(3)
        ]
        x = functools.reduce(combine, shifts)
    return x


def max_pool_3x3(x: jax.Array, stride: int, features_first: bool = False) -> jax.Array:
    """3x3 max pool, padding 1.

    A second derivative through ``reduce_window`` max gathers a tangent at each
    window's maximum (``select_and_gather_add``). On GPUs JAX lowers that by
    packing value and tangent into one 64-bit word, which fits float32 pairs
    exactly but truncates float64 ones to 32 bits each: the float64 parity
    check's exact alpha gradient was then off by 5e-8 relative on an H200
    (BENCHMARKS.md, session 18). So float64 on GPUs takes ``_max_pool_3x3_exact``,
    whose derivatives are exact in any precision; float32 and the CPU keep
    the reduce_window (exact there, and lighter in the Hessian-vector product).
    """
    if jnp.dtype(x.dtype).itemsize > 4 and jax.default_backend() == "gpu":
        return _max_pool_3x3_exact(x, stride, features_first)
    return _max_pool_3x3_window(x, stride, features_first)


def _max_pool_3x3_window(x: jax.Array, stride: int, features_first: bool) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, *_pool_window(x, stride, features_first))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _max_pool_3x3_exact(x: jax.Array, stride: int, features_first: bool) -> jax.Array:
    """The max pool with a tangent rule that picks each window's first maximum by
    comparisons: linear in the tangent, so every higher derivative is exact."""
    return _max_pool_3x3_window(x, stride, features_first)


@_max_pool_3x3_exact.defjvp
def _max_pool_3x3_exact_jvp(stride, features_first, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    pooled = _max_pool_3x3_exact(x, stride, features_first)
    return pooled, _at_first_max(x, pooled, x_dot, stride, features_first)


def _at_first_max(
    x: jax.Array, pooled: jax.Array, values: jax.Array, stride: int, features_first: bool
):
    """``values`` at each 3x3 window's first maximum of ``x`` (row-major window
    order, as PyTorch's max pool and XLA's select_and_scatter choose on ties)."""
    window, strides, padding = _pool_window(x, stride, features_first)
    x_padded = jnp.pad(x, padding, constant_values=-jnp.inf)
    values_padded = jnp.pad(values, padding)
    taken = jnp.zeros(pooled.shape, bool)
    picked = jnp.zeros(pooled.shape, values.dtype)
    for offset in itertools.product(*(range(w) for w in window)):  # row-major
        limit = [o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, pooled.shape, strict=True)]
        hit = (lax.slice(x_padded, offset, limit, strides) == pooled) & ~taken
        picked = jnp.where(hit, lax.slice(values_padded, offset, limit, strides), picked)
        taken = taken | hit
    return picked


@functools.lru_cache(maxsize=64)
def _avg_pool_divisor(height: int, width: int, stride: int) -> np.ndarray:
    """How many real (non-padding) pixels each 3x3 window covers, computed on the host.

    Computing this under jit as a pooled array of ones makes XLA constant-fold
    a reduce_window at compile time, which costs minutes at full size.
    """

    def counts(size):
        idx = np.arange(out_size(size, stride)) * stride - 1
        return np.minimum(idx + 3, size) - np.maximum(idx, 0)

    return np.outer(counts(height), counts(width)).astype(np.float32)


def avg_pool_3x3(x: jax.Array, stride: int, features_first: bool = False) -> jax.Array:
    """3x3 average pool, padding 1, padding excluded from the mean."""
    if stride == 1:
        summed = _pool_3x3_shifted(x, stride, features_first, jnp.add, 0.0)
    else:  # strided: reduce_window was as fast in gradients and 4x faster forward
        summed = lax.reduce_window(x, 0.0, lax.add, *_pool_window(x, stride, features_first))
    height, width = x.shape[-2:] if features_first else x.shape[1:3]
    divisor = _avg_pool_divisor(height, width, stride)
    if not features_first:
        divisor = divisor.reshape(divisor.shape + (1,) * (x.ndim - 3))
    return summed / divisor.astype(x.dtype)


def factorized_reduce_inputs(
    x: jax.Array, features_first: bool = False
) -> tuple[jax.Array, jax.Array]:
    """The two stride-2 views FactorizedReduce convolves: x[::2, ::2] and x[1::2, 1::2]."""
    height, width = x.shape[-2:] if features_first else x.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(
            f"FactorizedReduce needs even height and width, got {height}x{width}; "
            "use an input size divisible by 4 for a network with two reduction cells"
        )
    if features_first:
        return x[..., ::2, ::2], x[..., 1::2, 1::2]
    return x[:, ::2, ::2], x[:, 1::2, 1::2]


def torch_uniform_init(fan_in: int):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    With a concrete key the values are drawn on the host by numpy, seeded from
    the key: an eager jax.random call compiles once per shape, which made
    building a search network take half a minute.
    """
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        if isinstance(key, jax.core.Tracer):
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        seed = np.asarray(jax.random.key_data(key), dtype=np.uint32).ravel()
        values = np.random.default_rng(seed).uniform(-bound, bound, shape)
        # Cast on the host and device_put: jnp.asarray(values, dtype) compiles
        # (and JAX keeps) one small program per shape; device_put compiles nothing.
        return jax.device_put(values.astype(dtype))

    return init


def _host_constant(value: float):
    def init(*args):
        shape, dtype = args[-2], args[-1]
        return jax.device_put(np.full(shape, value, dtype))  # no compile (see above)

    return init


def _batch_axes(features_first: bool) -> tuple[int, int, int]:
    return (-3, -2, -1) if features_first else (0, 1, 2)


def batch_moments(x: jax.Array, features_first: bool = False) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over (N, H, W), per feature entry."""
    axes = _batch_axes(features_first)
    mean = x.mean(axis=axes, keepdims=True)
    var = jnp.square(x - mean).mean(axis=axes)
    return mean.reshape(var.shape), var


def normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    epsilon: float = 1e-5,
    features_first: bool = False,
) -> jax.Array:
    """(x - mean) / sqrt(var + epsilon) with per-feature (mean, var)."""
    if features_first:  # broadcast over the trailing (N, H, W)
        mean, var = mean[..., None, None, None], var[..., None, None, None]
    return (x - mean) * lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def normalize_batch(x: jax.Array, epsilon: float = 1e-5, features_first: bool = False):
    """Training-mode BN without scale and shift: (x_hat, mean, biased var) over (N, H, W).

    Same values as ``normalize(x, *batch_moments(x))``, with the closed-form
    derivative d x_hat = (dx - mean(dx) - x_hat mean(x_hat dx)) / std as its rule.
    Autodiff of the composite builds more reductions and elementwise terms, and
    the exact architecture gradient differentiates that graph once more: every
    BN of the supernet pays it. A JVP rule (not a VJP) keeps forward mode working.
    """
    mean, var = batch_moments(x, features_first)
    return normalize(x, mean, var, epsilon, features_first), mean, var


@normalize_batch.defjvp
def _normalize_batch_jvp(epsilon, features_first, primals, tangents):
    (x,), (dx,) = primals, tangents
    # Primal outputs through normalize_batch itself, so that higher derivatives
    # of x_hat and var use this rule again.
    x_hat, mean, var = normalize_batch(x, epsilon, features_first)
    axes = _batch_axes(features_first)
    d_mean = dx.mean(axis=axes, keepdims=True)
    x_hat_dx = (x_hat * dx).mean(axis=axes, keepdims=True)
    inv_std = lax.rsqrt(var + epsilon).reshape(d_mean.shape)
    d_x_hat = (dx - d_mean - x_hat * x_hat_dx) * inv_std
    d_var = 2.0 * x_hat_dx / inv_std  # d mean((x - mean)^2) = 2 mean((x - mean) dx)
    return (x_hat, mean, var), (d_x_hat, d_mean.reshape(mean.shape), d_var.reshape(var.shape))


def running_update(running, mean, var, count: int, momentum: float):
    """PyTorch's running-statistics update: the unbiased batch variance, no gradient.

    ``running`` is the (mean, var) pair; ``count`` the N*H*W values per entry.
    """
    unbiased = var * (count / max(count - 1, 1))
    return (
        momentum * running[0] + (1 - momentum) * lax.stop_gradient(mean),
        momentum * running[1] + (1 - momentum) * lax.stop_gradient(unbiased),
    )


class BatchNorm(nn.Module):
    """BatchNorm over (N, H, W) with PyTorch semantics, per feature entry.

    Normalises with the biased batch variance, keeps running statistics with the
    unbiased one (as torch.nn.BatchNorm2d does), momentum in Flax terms.
    Running statistics update only when 'batch_stats' is mutable.
    ``features_first``: x is (*F, N, H, W) instead of (N, H, W, *F).
    """

    affine: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    features_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ff = self.features_first
        feature_shape = x.shape[:-3] if ff else x.shape[3:]
        ra_mean = self.variable("batch_stats", "mean", _host_constant(0.0), feature_shape, x.dtype)
        ra_var = self.variable("batch_stats", "var", _host_constant(1.0), feature_shape, x.dtype)
        if self.affine:
            scale = self.param("scale", _host_constant(1.0), feature_shape, x.dtype)
            bias = self.param("bias", _host_constant(0.0), feature_shape, x.dtype)
        if self.is_initializing():
            return x  # variables declared; nothing to compute
        if train:
            y, mean, var = normalize_batch(x, self.epsilon, ff)
            if self.is_mutable_collection("batch_stats"):
                count = math.prod(x.shape[-3:] if ff else x.shape[:3])
                ra_mean.value, ra_var.value = running_update(
                    (ra_mean.value, ra_var.value), mean, var, count, self.momentum
                )
        else:
            y = normalize(x, ra_mean.value, ra_var.value, self.epsilon, ff)
        if self.affine:
            if ff:
                scale, bias = scale[..., None, None, None], bias[..., None, None, None]
            y = y * scale + bias
        return y


class RunningStats(nn.Module):
    """The running (mean, var) of a BatchNorm whose normalisation happens elsewhere.

    Same variables as ``BatchNorm`` ('batch_stats' mean and var of ``shape``), for
    the search cells' edge modules, which normalise in a pure function
    (``search_model.batch_norm_fn``) that also runs inside ``lax.scan``, where
    Flax modules cannot.
    Called with a batch's (mean, biased var) and ``count`` while 'batch_stats'
    is mutable, it updates them. Returns the statistics before any update.
    """

    shape: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32
    momentum: float = 0.9

    @nn.compact
    def __call__(self, batch=None, count: int = 0) -> tuple[jax.Array, jax.Array]:
        ra_mean = self.variable("batch_stats", "mean", _host_constant(0.0), self.shape, self.dtype)
        ra_var = self.variable("batch_stats", "var", _host_constant(1.0), self.shape, self.dtype)
        running = (ra_mean.value, ra_var.value)
        if batch is not None and self.is_mutable_collection("batch_stats"):
            ra_mean.value, ra_var.value = running_update(running, *batch, count, self.momentum)
        return running


class StdConv(nn.Module):
    """ReLU, 1x1 conv, BN. ``features_first``: (C, N, H, W) in and out, else NHWC."""

    features: int
    affine: bool = False
    features_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ff = self.features_first
        c_in = x.shape[-4] if ff else x.shape[-1]
        kernel = self.param("kernel", torch_uniform_init(c_in), (c_in, self.features))
        y = pointwise_conv(nn.relu(x), kernel, ff)
        return BatchNorm(self.affine, features_first=ff, name="bn")(y, train)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second shifted by one pixel), concat, BN.
    ``features_first``: (C, N, H, W) in and out, else NHWC."""

    features: int
    affine: bool = False
    features_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.features % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {self.features}")
        ff = self.features_first
        c_in = x.shape[-4] if ff else x.shape[-1]
        init = torch_uniform_init(c_in)
        k1 = self.param("kernel1", init, (c_in, self.features // 2))
        k2 = self.param("kernel2", init, (c_in, self.features // 2))
        even, odd = factorized_reduce_inputs(nn.relu(x), ff)
        y = jnp.concatenate(
            [pointwise_conv(even, k1, ff), pointwise_conv(odd, k2, ff)], axis=-4 if ff else -1
        )
        return BatchNorm(self.affine, features_first=ff, name="bn")(y, train)
