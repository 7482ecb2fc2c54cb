"""The DARTS search network (supernet), NHWC, with alphas as a separate argument.

Every edge of a search cell is a MixedOp: the softmax(alpha)-weighted sum of
all PRIMITIVES. To keep the XLA program small and the step fast, edges are not
built one module each: a cell computes the edges leaving the two cell inputs
in one batched call (``MixedEdges`` over an (M targets, S sources) edge grid),
then for each node the edges leaving it. Parameter-free ops (pools, identity)
of edges sharing a source are computed once per source: with affine-free BN
their outputs are identical for all those edges, as in pt.darts.

Alphas: ``{'normal': (n_edges, 8), 'reduce': (n_edges, 8)}``, rows in pt.darts
edge order (node 0's inputs, then node 1's, ...), columns in PRIMITIVES order.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from darts_jax import ops
from darts_jax.genotypes import PRIMITIVES, edge_offsets, num_edges

_OP_INDEX = {name: i for i, name in enumerate(PRIMITIVES)}


class MixedEdges(nn.Module):
    """MixedOps of the edges from S source states to M target nodes, in one call.

    ``x_nhwsc``: (N, H, W, S, C) source states; ``weights_mso``: (M, S, n_ops)
    softmaxed alphas. Returns (N, H', W', M, S, C), the mixed output per edge.
    Parameters carry a leading (M, S) edge grid.

    The four conv ops run as three conv blocks over a leading pair axis, so XLA
    sees half the convolutions: (sep_conv_3x3, sep_conv_5x5) first halves and
    second halves at dilation 1, (dil_conv_3x3, dil_conv_5x5) at dilation 2. A
    3x3 kernel enters a pair zero-padded to 5x5, which at the same dilation
    and 'same' padding is the same convolution; the weights keep their own
    shapes (k, k, M, S, C), so only real taps are trained. The BN statistics
    of a pair are one (2, M, S, C) entry, pair member first.
    """

    n_targets: int
    stride: int

    @nn.compact
    def __call__(self, x_nhwsc: jax.Array, weights_mso: jax.Array, train: bool) -> jax.Array:
        n, h, w, n_src, c = x_nhwsc.shape
        edges = (self.n_targets, n_src)
        stride = self.stride
        # Declare every parameter and BN first, so that `init` can skip the compute.
        pairs = {  # pair name -> (dilation, stride, (prefix, kernel size) per member)
            "sep_convs_1": (1, stride, (("sep_conv_3x3_1", 3), ("sep_conv_5x5_1", 5))),
            "sep_convs_2": (1, 1, (("sep_conv_3x3_2", 3), ("sep_conv_5x5_2", 5))),
            "dil_convs": (2, stride, (("dil_conv_3x3", 3), ("dil_conv_5x5", 5))),
        }
        kernels = {}
        for pair, (_, _, members) in pairs.items():
            dws, pws = [], []
            for prefix, k in members:
                dw = self.param(f"{prefix}_dw", ops.torch_uniform_init(k * k), (k, k, *edges, c))
                pad = (5 - k) // 2  # embed 3x3 in 5x5: same conv at the same dilation
                dws.append(jnp.pad(dw, ((pad, pad), (pad, pad)) + ((0, 0),) * 3))
                pws.append(self.param(f"{prefix}_pw", ops.torch_uniform_init(c), (*edges, c, c)))
            kernels[pair] = (jnp.stack(dws, axis=2), jnp.stack(pws))  # (5,5,2,M,S,C), (2,M,S,C,C)
        if stride == 2:  # skip_connect is a FactorizedReduce per edge
            fr_init = ops.torch_uniform_init(c)
            fr1 = self.param("skip_connect_fr1", fr_init, (*edges, c, c // 2))
            fr2 = self.param("skip_connect_fr2", fr_init, (*edges, c, c // 2))
        bn_shapes = {"max_pool_3x3_bn": (n_src, c), "avg_pool_3x3_bn": (n_src, c)}
        bn_shapes.update({f"{pair}_bn": (2, *edges, c) for pair in pairs})
        if stride == 2:
            bn_shapes["skip_connect_bn"] = (*edges, c)
        bns = {b: ops.BatchNorm(name=b) for b in bn_shapes}
        out_shape = (n, ops.out_size(h, stride), ops.out_size(w, stride), *edges, c)
        if self.is_initializing():
            for b, bn in bns.items():
                bn(jax.ShapeDtypeStruct((1, 1, 1, *bn_shapes[b]), x_nhwsc.dtype), train)
            return jnp.zeros(out_shape, x_nhwsc.dtype)

        def conv_pair(pair, y):
            """Depthwise 5x5 -> pointwise -> BN for both members of a pair at once."""
            dilation, pair_stride, _ = pairs[pair]
            dw, pw = kernels[pair]
            y = ops.pointwise_conv(ops.depthwise_conv(y, dw, pair_stride, dilation), pw)
            return bns[f"{pair}_bn"](y, train)

        x_relu = nn.relu(x_nhwsc)[:, :, :, None, None]  # (N, H, W, 1, 1, S, C)
        max_pool = ops.max_pool_3x3(x_nhwsc, stride)
        avg_pool = ops.avg_pool_3x3(x_nhwsc, stride)
        terms = {
            "max_pool_3x3": bns["max_pool_3x3_bn"](max_pool, train)[:, :, :, None],
            "avg_pool_3x3": bns["avg_pool_3x3_bn"](avg_pool, train)[:, :, :, None],
        }
        if stride == 1:
            terms["skip_connect"] = x_nhwsc[:, :, :, None]
        else:
            even, odd = ops.factorized_reduce_inputs(x_relu[:, :, :, 0])
            y = jnp.concatenate([ops.pointwise_conv(even, fr1), ops.pointwise_conv(odd, fr2)], -1)
            terms["skip_connect"] = bns["skip_connect_bn"](y, train)
        sep = conv_pair("sep_convs_2", nn.relu(conv_pair("sep_convs_1", x_relu)))
        dil = conv_pair("dil_convs", x_relu)
        terms["sep_conv_3x3"], terms["sep_conv_5x5"] = sep[:, :, :, 0], sep[:, :, :, 1]
        terms["dil_conv_3x3"], terms["dil_conv_5x5"] = dil[:, :, :, 0], dil[:, :, :, 1]
        # `none` contributes exactly zero and is left out of the sum; its alpha
        # still matters through the softmax normalisation.
        out = None
        for name, term in terms.items():
            term = term * weights_mso[:, :, _OP_INDEX[name], None]
            out = term if out is None else out + term
        return out


class SearchCell(nn.Module):
    """A search cell: preprocess both inputs, then the DAG of n_nodes MixedOp nodes."""

    features: int
    reduction: bool
    reduction_prev: bool
    n_nodes: int = 4

    @nn.compact
    def __call__(self, s0, s1, weights_edge_op: jax.Array, train: bool) -> jax.Array:
        c, n = self.features, self.n_nodes
        if self.reduction_prev:
            s0 = ops.FactorizedReduce(c, name="preproc0")(s0, train)
        else:
            s0 = ops.StdConv(c, name="preproc0")(s0, train)
        s1 = ops.StdConv(c, name="preproc1")(s1, train)
        offsets = edge_offsets(n)
        # Edges from the two cell inputs, to every node: rows offset(i) + s.
        rows = np.array([[offsets[i] + s for s in range(2)] for i in range(n)])
        mixed = MixedEdges(n, 2 if self.reduction else 1, name="input_edges")(
            jnp.stack([s0, s1], axis=3), weights_edge_op[rows], train
        )
        node_sums = [mixed[:, :, :, i].sum(axis=3) for i in range(n)]
        nodes = []
        for j in range(n):
            nodes.append(node_sums[j])
            targets = list(range(j + 1, n))
            if not targets:
                break
            # Edges leaving node j (state j + 2) towards every later node.
            rows = np.array([[offsets[i] + j + 2] for i in targets])
            mixed = MixedEdges(len(targets), 1, name=f"node{j}_edges")(
                nodes[j][:, :, :, None], weights_edge_op[rows], train
            )
            for m, i in enumerate(targets):
                node_sums[i] = node_sums[i] + mixed[:, :, :, m, 0]
        return jnp.concatenate(nodes, axis=-1)


def reduction_indices(layers: int) -> tuple[int, int]:
    return (layers // 3, 2 * layers // 3)


class Stem(nn.Module):
    """Conv 3x3 (bias-free, padding 1, ``stride``) then affine BN."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x_nhwc: jax.Array, train: bool) -> jax.Array:
        c_in = x_nhwc.shape[-1]
        kernel = self.param("kernel", ops.torch_uniform_init(9 * c_in), (3, 3, c_in, self.features))
        y = lax.conv_general_dilated(
            x_nhwc,
            kernel,
            (self.stride, self.stride),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return ops.BatchNorm(affine=True, name="bn")(y, train)


def classifier(features_in: int, num_classes: int, name: str = "classifier") -> nn.Dense:
    init = ops.torch_uniform_init(features_in)
    return nn.Dense(num_classes, kernel_init=init, bias_init=init, name=name)


class SearchNetwork(nn.Module):
    """pt.darts's SearchCNN: stem, `layers` search cells, global pool, linear."""

    C: int = 16
    num_classes: int = 10
    layers: int = 8
    n_nodes: int = 4
    stem_multiplier: int = 3

    @nn.compact
    def __call__(self, x_nhwc: jax.Array, alphas: Mapping[str, jax.Array], train: bool):
        check_alphas(alphas, self.n_nodes)
        s0 = s1 = Stem(self.stem_multiplier * self.C, name="stem")(x_nhwc, train)
        weights = {k: jax.nn.softmax(v, axis=-1) for k, v in alphas.items()}
        c, reduction_prev = self.C, False
        for i in range(self.layers):
            reduction = i in reduction_indices(self.layers)
            c = c * 2 if reduction else c
            cell = SearchCell(c, reduction, reduction_prev, self.n_nodes, name=f"cell{i}")
            s0, s1 = s1, cell(s0, s1, weights["reduce" if reduction else "normal"], train)
            reduction_prev = reduction
        features = s1.mean(axis=(1, 2))
        return classifier(features.shape[-1], self.num_classes)(features)


def check_alphas(alphas: Mapping[str, jax.Array], n_nodes: int) -> None:
    expected = (num_edges(n_nodes), len(PRIMITIVES))
    if set(alphas) != {"normal", "reduce"}:
        raise ValueError(f"alphas must have keys 'normal' and 'reduce', got {sorted(alphas)}")
    for k, v in alphas.items():
        if tuple(v.shape) != expected:
            raise ValueError(f"alphas[{k!r}] must have shape {expected}, got {tuple(v.shape)}")


def init_alphas(rng: jax.Array, n_nodes: int = 4, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Alphas as pt.darts initialises them: 1e-3 * N(0, 1), one matrix per cell type."""
    shape = (num_edges(n_nodes), len(PRIMITIVES))
    k_normal, k_reduce = jax.random.split(rng)
    return {
        "normal": 1e-3 * jax.random.normal(k_normal, shape, dtype),
        "reduce": 1e-3 * jax.random.normal(k_reduce, shape, dtype),
    }


def init_variables(model: SearchNetwork, rng: jax.Array, input_shape, alphas) -> dict:
    """Builds the variables eagerly, without compiling a forward pass: MixedEdges and
    BatchNorm skip their compute while initialising and weights are drawn on the host."""
    x = jnp.zeros((2, *input_shape[1:]), jnp.float32)
    return model.init(rng, x, alphas, train=True)


def count_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
