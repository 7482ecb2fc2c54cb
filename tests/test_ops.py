import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from darts_jax import ops


def _ref_depthwise(x, kernel, stride, dilation):
    """Plain per-channel convolution with numpy loops (NHWC, kernel (k, k, C))."""
    k = kernel.shape[0]
    pad = dilation * (k - 1) // 2
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            for a in range(k):
                for b in range(k):
                    out[:, i, j] += (
                        xp[:, i * stride + a * dilation, j * stride + b * dilation] * kernel[a, b]
                    )
    return out


DEPTHWISE_FNS = (ops.depthwise_conv_grouped, ops.depthwise_conv_matmul)


@pytest.mark.parametrize("fn", DEPTHWISE_FNS)
@pytest.mark.parametrize(
    "k, stride, dilation, size",
    [(3, 1, 1, 8), (5, 2, 1, 8), (3, 2, 2, 7), (5, 1, 2, 8), (5, 1, 2, 2)],
)
def test_depthwise_conv_matches_reference(fn, k, stride, dilation, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size + 1, 3)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 3)).astype(np.float32)
    want = _ref_depthwise(x, kernel, stride, dilation)
    got = fn(jnp.asarray(x), jnp.asarray(kernel), stride, dilation)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", DEPTHWISE_FNS)
def test_depthwise_conv_broadcasts_one_input_over_edge_kernels(fn):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 8, 1, 2, 3)).astype(np.float32)  # (N, H, W, 1, S, C)
    kernel = rng.normal(size=(3, 3, 4, 2, 3)).astype(np.float32)  # (k, k, M, S, C)
    y = fn(jnp.asarray(x), jnp.asarray(kernel), 1, 1)
    assert y.shape == (2, 8, 8, 4, 2, 3)
    want = _ref_depthwise(x[:, :, :, 0, 1], kernel[:, :, 3, 1], 1, 1)
    np.testing.assert_allclose(y[:, :, :, 3, 1], want, rtol=1e-5, atol=1e-5)
    # an input with fewer feature axes than the kernel broadcasts the same way
    y2 = fn(jnp.asarray(x[:, :, :, 0]), jnp.asarray(kernel), 1, 1)
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-6)


def test_depthwise_matmul_equals_grouped_to_second_order():
    """The matmul form's first and second derivatives (the exact architect
    differentiates through a weight gradient) equal the grouped convolution's."""
    with jax.enable_x64():
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(2, 6, 6, 1, 2)))
        kernel = jnp.asarray(rng.normal(size=(5, 5, 3, 2)))
        probe = jnp.asarray(rng.normal(size=(2, 3, 3, 3, 2)))

        def grad_norm(fn):
            def loss(x, kernel):
                return jnp.sum(jnp.sin(fn(x, kernel, 2, 2)) * probe)

            def inner(x, kernel):  # the squared norm of a kernel gradient, as in the unrolled step
                return jnp.sum(jax.grad(loss, argnums=1)(x, kernel) ** 2) + loss(x, kernel)

            return jax.grad(inner, argnums=(0, 1))(x, kernel)

        for got, want in zip(
            grad_norm(ops.depthwise_conv_matmul), grad_norm(ops.depthwise_conv_grouped), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_depthwise_conv_dispatch(monkeypatch):
    calls = []
    for name in ("depthwise_conv_grouped", "depthwise_conv_matmul"):
        fn = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, fn=fn, name=name: calls.append(name) or fn(*a))
    x, kernel = jnp.ones((1, 4, 4, 1, 2)), jnp.ones((3, 3, 3, 2))
    for impl in ("auto", "grouped", "matmul"):
        monkeypatch.setattr(ops, "DEPTHWISE_IMPL", impl)
        ops.depthwise_conv(x, kernel, 1, 1)
    assert jax.default_backend() == "cpu"  # auto: matrix products on the CPU
    assert calls == ["depthwise_conv_matmul", "depthwise_conv_grouped", "depthwise_conv_matmul"]
    monkeypatch.setattr(ops, "DEPTHWISE_IMPL", "winograd")
    with pytest.raises(ValueError, match="DARTS_JAX_DEPTHWISE='winograd'.*matmul"):
        ops.depthwise_conv(x, kernel, 1, 1)


def test_avg_pool_excludes_padding():
    x = jnp.ones((1, 5, 5, 2))
    np.testing.assert_allclose(ops.avg_pool_3x3(x, 1), 1.0, rtol=1e-6)
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    # top-left window covers rows/cols 0..1: mean of 0, 1, 4, 5
    assert float(ops.avg_pool_3x3(x, 1)[0, 0, 0, 0]) == pytest.approx(2.5)
    assert ops.avg_pool_3x3(x, 2).shape == (1, 2, 2, 1)


def test_max_pool_pads_with_minus_infinity():
    x = -jnp.ones((1, 4, 4, 1))
    np.testing.assert_array_equal(ops.max_pool_3x3(x, 1), -1.0)
    assert ops.max_pool_3x3(x, 2).shape == (1, 2, 2, 1)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("features_first", [False, True])
def test_pools_match_reduce_window_with_gradients(stride, features_first):
    """Both pools (the stride-1 average pool runs as shifted slices) equal plain
    ``lax.reduce_window`` pools, odd and even sizes: values, gradients and a
    Hessian-vector product, in float64."""
    with jax.enable_x64():
        x_nhwc = jax.random.normal(jax.random.PRNGKey(3), (2, 7, 6, 3), jnp.float64)
        x = jnp.transpose(x_nhwc, (3, 0, 1, 2)) if features_first else x_nhwc
        window, strides, padding = ops._pool_window(x, stride, features_first)

        def reference_max(x):
            return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding)

        def reference_avg(x):
            summed = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
            count = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, window, strides, padding)
            return summed / count

        pools = [
            (lambda x: ops.max_pool_3x3(x, stride, features_first), reference_max),
            (lambda x: ops._max_pool_3x3_exact(x, stride, features_first), reference_max),
            (lambda x: ops.avg_pool_3x3(x, stride, features_first), reference_avg),
        ]
        tangent = jax.random.normal(jax.random.PRNGKey(4), x.shape, jnp.float64)
        # The references run on the CPU: on GPUs JAX's float64 second derivative
        # of a reduce_window max is only 32-bit precise (ops.max_pool_3x3).
        cpu = jax.devices("cpu")[0]
        for pool, reference in pools:
            grads = [jax.grad(lambda x, f=f: jnp.sum(jnp.sin(f(x)))) for f in (pool, reference)]
            got = pool(x), grads[0](x), jax.jvp(grads[0], (x,), (tangent,))[1]
            with jax.default_device(cpu):
                x_cpu, tangent_cpu = jax.device_put((x, tangent), cpu)
                want = reference(x_cpu), grads[1](x_cpu)
                want += (jax.jvp(grads[1], (x_cpu,), (tangent_cpu,))[1],)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
            for a, b in zip(got[1:], want[1:], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("max_pool", [ops.max_pool_3x3, ops._max_pool_3x3_exact])
def test_max_pool_derivative_takes_the_first_maximum_of_a_window(max_pool):
    """Ties go to the window's first maximum, row-major (PyTorch's choice); the
    padding never wins."""
    x = jnp.zeros((1, 3, 4, 1)).at[0, 2, 3, 0].set(-1.0)
    grad = jax.grad(lambda x: max_pool(x, 2, False).sum())(x)[0, :, :, 0]
    # Windows of the 2x2 output start at rows/columns -1 and 1; each counts once.
    want = np.zeros((3, 4))
    want[0, 0] = want[0, 1] = want[1, 0] = want[1, 1] = 1.0
    np.testing.assert_array_equal(grad, want)
    tangent = jnp.arange(12.0).reshape(x.shape)
    _, dy = jax.jvp(lambda x: max_pool(x, 2, False), (x,), (tangent,))
    np.testing.assert_array_equal(dy[0, :, :, 0], [[0.0, 1.0], [4.0, 5.0]])


def test_max_pool_second_derivative_is_exact_in_float64():
    """The Hessian-vector product's piece of a max pool: the derivative of its
    gradient moves the cotangent's tangent to each window's maximum. Checked
    against numpy on the default backend (on GPUs, the float64 path that
    avoids JAX's 32-bit packing)."""
    with jax.enable_x64():
        keys = jax.random.split(jax.random.PRNGKey(5), 3)
        x = jax.random.normal(keys[0], (2, 5, 6, 3), jnp.float64)
        cotangent, cotangent_dot = (
            jax.random.normal(k, (2, 3, 3, 3), jnp.float64) for k in keys[1:]
        )

        def grad_x(x, cotangent):
            return jax.vjp(lambda x: ops.max_pool_3x3(x, 2), x)[1](cotangent)[0]

        _, got = jax.jvp(grad_x, (x, cotangent), (jnp.zeros_like(x), cotangent_dot))
        x, cotangent_dot, got = (np.asarray(a) for a in (x, cotangent_dot, got))
    x_padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    want = np.zeros(x_padded.shape)
    for n, i, j, c in np.ndindex(cotangent_dot.shape):
        window = x_padded[n, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, c]
        di, dj = np.unravel_index(np.argmax(window), window.shape)
        want[n, 2 * i + di, 2 * j + dj, c] += cotangent_dot[n, i, j, c]
    np.testing.assert_array_equal(got, want[:, 1:-1, 1:-1])


def test_max_pool_takes_the_exact_form_for_float64_on_gpus(monkeypatch):
    def uses_exact_form(dtype):
        jaxpr = jax.make_jaxpr(lambda x: ops.max_pool_3x3(x, 1))(jnp.zeros((1, 4, 4, 2), dtype))
        return "custom_jvp_call" in str(jaxpr)

    with jax.enable_x64():
        # The CPU's reduce_window derivatives are exact in float64.
        assert uses_exact_form(jnp.float64) == (jax.default_backend() == "gpu")
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert uses_exact_form(jnp.float64)
        assert not uses_exact_form(jnp.float32)  # 32-bit pairs pack exactly


def test_batch_norm_matches_torch_semantics():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(3.0, 2.0, size=(4, 3, 3, 5)))
    bn = ops.BatchNorm(affine=True)
    variables = bn.init(jax.random.PRNGKey(0), x, train=True)
    y, mutated = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)  # biased variance
    stats = mutated["batch_stats"]
    n = 4 * 3 * 3
    np.testing.assert_allclose(stats["mean"], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
    unbiased = x.var(axis=(0, 1, 2)) * n / (n - 1)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * unbiased, rtol=1e-5)
    y_eval = bn.apply({**variables, "batch_stats": stats}, x, train=False)
    np.testing.assert_allclose(
        y_eval, (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5), rtol=1e-5
    )
    assert set(variables["params"]) == {"scale", "bias"}
    assert "params" not in ops.BatchNorm().init(jax.random.PRNGKey(0), x, train=True)


def test_normalize_batch_closed_form_derivative_equals_autodiff_to_second_order():
    """``normalize_batch``'s hand-written derivative rule gives the same first and
    second derivatives (reverse, and forward over reverse) as autodiff of
    ``normalize(x, *batch_moments(x))``, whether or not the moments are used, and
    inside ``lax.scan`` (as in the node scan)."""

    def composite(x):
        mean, var = ops.batch_moments(x)
        return ops.normalize(x, mean, var), mean, var

    with jax.enable_x64():
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.normal(1.0, 2.0, size=(3, 4, 5, 2, 3)))
        probe = jnp.asarray(rng.normal(size=x.shape))

        def losses(norm):
            def all_outputs(x):
                y, mean, var = norm(x)
                return jnp.sum(jnp.sin(y) * probe) + jnp.sum(mean**2) + jnp.sum(jnp.cos(var))

            def y_only(x):  # moments unused: their cotangents are symbolic zeros
                return jnp.sum(jnp.sin(norm(x)[0]) * probe)

            def in_scan(x):
                def body(carry, x_i):
                    y = norm(x_i + carry)[0]
                    return carry + 0.1 * y.mean(), jnp.sum(jnp.sin(y) * probe[0])

                return lax.scan(body, 0.0, jnp.stack([x[:1]] * 3))[1].sum()

            return all_outputs, y_only, in_scan

        for custom, plain in zip(losses(ops.normalize_batch), losses(composite), strict=True):
            np.testing.assert_allclose(custom(x), plain(x), rtol=1e-12)
            np.testing.assert_allclose(jax.grad(custom)(x), jax.grad(plain)(x), atol=1e-12)

            def second(loss):  # a function of the gradient, differentiated again
                return jax.grad(lambda x: jnp.sum(jnp.tanh(jax.grad(loss)(x)) * probe))(x)

            np.testing.assert_allclose(second(custom), second(plain), atol=1e-12)

            def forward_over_reverse(loss):  # a Hessian-vector product, as tests use
                return jax.jvp(jax.grad(loss), (x,), (probe,))[1]

            np.testing.assert_allclose(
                forward_over_reverse(custom), forward_over_reverse(plain), atol=1e-12
            )


def test_factorized_reduce_shapes_and_odd_size_error():
    fr = ops.FactorizedReduce(6)
    x = jnp.ones((2, 8, 8, 4))
    v = fr.init(jax.random.PRNGKey(0), x, train=True)
    y, _ = fr.apply(v, x, train=True, mutable=["batch_stats"])
    assert y.shape == (2, 4, 4, 6)
    with pytest.raises(ValueError, match="even height and width"):
        fr.apply(v, jnp.ones((2, 7, 7, 4)), train=True, mutable=["batch_stats"])


def test_torch_uniform_init_bounds_and_determinism():
    init = ops.torch_uniform_init(9)
    a = init(jax.random.PRNGKey(3), (3, 3, 64))
    b = init(jax.random.PRNGKey(3), (3, 3, 64))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a).max()) <= 1 / 3
    assert float(jnp.abs(a).max()) > 0.3


def test_host_drawn_initialisers_compile_nothing():
    """Weights and BN constants reach the device as drawn, in their dtype: a
    device-side cast or copy would compile (and cache) one program per shape."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        key = jax.random.PRNGKey(5)
        kernel = ops.torch_uniform_init(7)(key, (7, 1, 13), jnp.float32)
        stats = ops.RunningStats((11,), jnp.float32).init(key)["batch_stats"]
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    assert kernel.dtype == jnp.float32 and kernel.shape == (7, 1, 13)
    np.testing.assert_array_equal(stats["mean"], np.zeros(11, np.float32))
    np.testing.assert_array_equal(stats["var"], np.ones(11, np.float32))
    assert stats["var"].dtype == jnp.float32


def test_pointwise_conv_is_a_per_edge_matmul():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 3, 4, 5)).astype(np.float32)
    k = rng.normal(size=(4, 5, 6)).astype(np.float32)
    y = ops.pointwise_conv(jnp.asarray(x), jnp.asarray(k))
    np.testing.assert_allclose(y[:, :, :, 2], x[:, :, :, 2] @ k[2], rtol=1e-5)
    conv = lax.conv_general_dilated(
        jnp.asarray(x[:, :, :, 2]),
        jnp.asarray(k[2])[None, None],
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(y[:, :, :, 2], conv, rtol=1e-5)


def _activation_copies(hlo: str, min_elements: int) -> list[str]:
    """Stand-alone fusions of optimized HLO that only copy or transpose an array of
    at least ``min_elements``: memory traffic that computes nothing."""
    bodies = dict(re.findall(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
    found = []
    for line in hlo.splitlines():
        m = re.search(r"= \w+\[([\d,]*)\][^ ]* fusion\(.*kind=kLoop, calls=%?([\w.\-]+)", line)
        if not m or math.prod(int(d) for d in m.group(1).split(",") if d) < min_elements:
            continue
        ops_used = set(re.findall(r"\s([a-z\-]+)\(", bodies.get(m.group(2), "")))
        if ops_used <= {"parameter", "copy", "transpose", "bitcast"}:
            found.append(line.strip())
    return found


def test_features_first_pointwise_gradient_copies_no_activation():
    """The features-first 1x1 conv flattens the pixels, so XLA folds the transposes
    of JAX's gradient products into the products. Written over (N, H, W) axes its
    gradient copied three activation-sized arrays (cotangent in, input gradient
    out, input for the kernel gradient); at the default config that made a
    gradient pass 3-11 % slower and its compile 4-13 s longer (BENCHMARKS.md,
    session 15)."""
    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 4, 8, 8)  # (M, S, C, N, H, W)
    x, r = (jnp.asarray(rng.normal(size=shape).astype(np.float32)) for _ in range(2))
    pw = jnp.asarray(rng.normal(size=(2, 3, 4, 4)).astype(np.float32))

    def loss(x, pw):
        return jnp.sum(jax.nn.relu(ops.pointwise_conv(x, pw, True)) * r)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, pw).compile().as_text()
    assert _activation_copies(hlo, math.prod(shape[-4:])) == []
    want = jnp.einsum("mscd,mscnhw->msdnhw", pw, x)
    np.testing.assert_allclose(ops.pointwise_conv(x, pw, True), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, dilation", [(1, 1), (1, 2), (2, 1)])
def test_depthwise_matmul_makes_no_padded_copy_of_its_input(stride, dilation):
    """Each of the k row-shifted views is one slice and one small pad of the input,
    fused into the stacking. Built as slices of a zero-padded copy, XLA:CPU
    materialised that copy in every call and padded the input gradient the same
    way (about 2 % of the search step's fusions, BENCHMARKS.md session 17)."""
    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 3, 8, 6)  # (M, S, C, N, H, W), features first
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(5, 5, 2, 3, 4)).astype(np.float32))
    padded_rows = shape[-2] + 2 * ops.same_padding(5, dilation)

    def loss(x, kernel):
        return jnp.sum(jnp.sin(ops.depthwise_conv_matmul(x, kernel, stride, dilation, True)))

    for fn in (loss, jax.grad(loss, argnums=(0, 1))):
        hlo = jax.jit(fn).lower(x, kernel).compile().as_text()
        entry = hlo[hlo.index("ENTRY") :]
        arrays = re.findall(r"= f32\[([\d,]+)\]", entry)
        padded = [a for a in arrays if a.split(",")[-2:] == [str(padded_rows), str(shape[-1])]]
        assert padded == []
    want = ops.depthwise_conv_grouped(x, kernel, stride, dilation, True)
    got = ops.depthwise_conv_matmul(x, kernel, stride, dilation, True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _to_features_first(x_nhwc):
    return jnp.moveaxis(x_nhwc, (0, 1, 2), (-3, -2, -1))


@pytest.mark.parametrize("stride", [1, 2])
def test_features_first_ops_equal_their_nhwc_forms(stride):
    """Every op with ``features_first`` computes the NHWC op in the (*F, N, H, W) layout."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3, 4)).astype(np.float32))  # (N, H, W, S, C)
    x_ff = _to_features_first(x)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 3, 4)).astype(np.float32))  # (k, k, M, S, C)
    pw = jnp.asarray(rng.normal(size=(3, 4, 5)).astype(np.float32))
    for fn in DEPTHWISE_FNS:  # one input broadcast over two edges' kernels
        want = fn(x[:, :, :, None], kernel, stride, 2)
        got = fn(x_ff, kernel, stride, 2, features_first=True)
        np.testing.assert_allclose(got, _to_features_first(want), rtol=1e-5, atol=1e-5)
    pairs = [
        (ops.pointwise_conv(x, pw), ops.pointwise_conv(x_ff, pw, True)),
        (ops.max_pool_3x3(x, stride), ops.max_pool_3x3(x_ff, stride, True)),
        (ops.avg_pool_3x3(x, stride), ops.avg_pool_3x3(x_ff, stride, True)),
        (ops.normalize_batch(x)[0], ops.normalize_batch(x_ff, 1e-5, True)[0]),
        *zip(
            ops.factorized_reduce_inputs(x), ops.factorized_reduce_inputs(x_ff, True), strict=True
        ),
    ]
    for want, got in pairs:
        np.testing.assert_allclose(got, _to_features_first(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.batch_moments(x_ff, True), ops.batch_moments(x), rtol=1e-5)


@pytest.mark.parametrize("module", [ops.BatchNorm, ops.StdConv, ops.FactorizedReduce])
def test_features_first_modules_equal_their_nhwc_forms(module):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 6))
    args = () if module is ops.BatchNorm else (4,)
    nhwc, ff = module(*args, affine=True), module(*args, affine=True, features_first=True)
    variables = nhwc.init(jax.random.PRNGKey(1), x, train=True)
    x_ff = _to_features_first(x)
    assert jax.tree.map(jnp.shape, ff.init(jax.random.PRNGKey(1), x_ff, train=True)) == (
        jax.tree.map(jnp.shape, variables)
    )
    for train in (True, False):
        want, stats = nhwc.apply(variables, x, train=train, mutable=["batch_stats"])
        got, stats_ff = ff.apply(variables, x_ff, train=train, mutable=["batch_stats"])
        np.testing.assert_allclose(got, _to_features_first(want), rtol=1e-5, atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), stats, stats_ff)
